#!/usr/bin/env python3
"""Renders the chart and lays its pods out as processes on loopback, as a kubelet would.

Used by tests/tests/chart_cluster.rs (run with the venv-chart python, scripts/chart-check.sh).
For every StatefulSet pod: the volumes it mounts (ConfigMaps, Secrets, claims, emptyDirs) are
written under ROOT/pods/POD, its env is resolved (fieldRef, secretKeyRef, $(VAR)), and its
containers' argv, probes and preStop hook are printed as JSON for the test to run.

No DNS and no network namespaces here, so three rewrites stand in for them, applied to argv,
env and mounted files alike:
- each pod gets its own loopback IP; its DNS name (POD.SERVICE.NS.svc.cluster.local, only for
  a StatefulSet whose serviceName is a headless Service selecting it) becomes that IP, and
  0.0.0.0 (the pod's own interfaces) becomes it too;
- a container path under a volume mount becomes the host directory holding that volume;
- the image's ENTRYPOINT (tini) is left out and its binaries come first on PATH.
A name or path the chart gets wrong is not rewritten, and the process fails on it.

Usage: pods.py --values FILE... [--set-json JSON] --material JSON_FILE --root DIR --ip-prefix 127.A.B
       --bin-dir DIR
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_chart as cc  # noqa: E402  (rendering with the strict YAML loader)
import helm_python as helm  # noqa: E402

DOMAIN = "cluster.local"
# The image (deploy/docker/Dockerfile): WORKDIR, and tini as ENTRYPOINT (not run here).
IMAGE_WORKDIR = "/var/lib/shoal"
IMAGE_ENTRYPOINT = ["/usr/bin/tini", "--"]
REWRITTEN: set[Path] = set()


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Fail(Exception):
    """What a kubelet would report as an event (and the pod would never start)."""


class Rewriter:
    """DNS names to IPs and container paths to host paths, in one pass over a string."""

    def __init__(self, names: dict[str, str], mounts: dict[str, str], own_ip: str | None):
        self.names = names
        self.mounts = mounts
        self.own_ip = own_ip
        alts = [re.escape(n) for n in sorted(names, key=len, reverse=True)]
        # A mount path counts only as a whole path component run: not inside another path.
        alts += [rf"(?<![\w./-]){re.escape(p)}(?=$|[/\s\"',:;=)]|$)" for p in sorted(mounts, key=len, reverse=True)]
        if own_ip:
            alts.append(r"(?<![\d.])0\.0\.0\.0(?=:)")
        self.rx = re.compile("|".join(alts)) if alts else None

    def __call__(self, s: str) -> str:
        if not self.rx:
            return s

        def sub(m: re.Match) -> str:
            t = m.group(0)
            if t in self.names:
                return self.names[t]
            if t in self.mounts:
                return self.mounts[t]
            return self.own_ip or t

        return self.rx.sub(sub, s)


def expand_vars(s: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables only, $$ escapes, others left as is."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), s)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--values", action="append", default=[])
    ap.add_argument("--set-json", default="{}")
    ap.add_argument("--material", required=True,
                    help="JSON file: the operator's files (tls_cert, tls_key, ca, principals, signing_keys, "
                         "tenant_credential) and S3 keys (s3_access_key_id, s3_secret_access_key)")
    ap.add_argument("--root", required=True)
    ap.add_argument("--ip-prefix", required=True, help="first three octets of the pods' loopback IPs")
    ap.add_argument("--bin-dir", required=True, help="where the image's binaries are")
    a = ap.parse_args()

    values: dict = {}
    for f in a.values:
        values = deep_merge(values, cc.load_values(Path(f)))
    values = deep_merge(values, json.loads(a.set_json))
    chart = helm.Chart.load(cc.CHART)
    try:
        docs, notes = cc.render(chart, values)
        merged = chart.merge_values(values)
    finally:
        chart.close()
    ns = cc.NAMESPACE
    root = Path(a.root)

    secrets = operator_secrets(merged, json.loads(Path(a.material).read_text()))
    for d in cc.find(docs, "Secret"):
        data = {k: base64.b64decode(v) for k, v in (d.get("data") or {}).items()}
        data.update({k: v.encode() for k, v in (d.get("stringData") or {}).items()})
        secrets[d["metadata"]["name"]] = data
    configmaps = {d["metadata"]["name"]: {k: v.encode() for k, v in d.get("data", {}).items()}
                  for d in cc.find(docs, "ConfigMap")}
    services = {d["metadata"]["name"]: d for d in cc.find(docs, "Service")}

    # Pods, their IPs and the DNS records Kubernetes would publish for them.
    pods = []
    names: dict[str, str] = {}
    n = 10
    for sts in cc.find(docs, "StatefulSet"):
        spec = sts["spec"]
        labels = spec["template"]["metadata"]["labels"]
        svc = services.get(spec["serviceName"])
        publishes = (svc is not None and svc["spec"].get("clusterIP") == "None"
                     and cc.matches(svc["spec"].get("selector", {}), labels))
        for i in range(spec["replicas"]):
            pod = f"{sts['metadata']['name']}-{i}"
            ip = f"{a.ip_prefix}.{n}"
            n += 1
            if publishes:
                names[f"{pod}.{spec['serviceName']}.{ns}.svc.{DOMAIN}"] = ip
            pods.append((sts, pod, ip))

    out_pods = []
    for sts, pod, ip in pods:
        try:
            out_pods.append(materialize(sts, pod, ip, ns, root / "pods" / pod, names, secrets, configmaps, a.bin_dir))
        except Fail as e:
            print(f"pod {pod}: {e}", file=sys.stderr)
            return 1
    try:
        spark = spark_settings(notes, names, secrets, root / "spark")
    except Fail as e:
        print(f"Spark settings from NOTES.txt: {e}", file=sys.stderr)
        return 1
    stores = [tomllib.loads(cm["worker.toml"].decode()).get("object_store") for cm in configmaps.values()
              if "worker.toml" in cm]
    json.dump({"pods": out_pods, "dns": names, "spark": spark, "object_store": stores[0] if stores else None},
              sys.stdout, indent=1)
    return 0


def operator_secrets(v: dict, material: dict) -> dict[str, dict[str, bytes]]:
    """The Secrets docs/operations.md has the operator create with kubectl, named and keyed as
    the values say: TLS and auth in the release namespace, the CA and a tenant credential in
    Spark's (one namespace here), and the S3 keys when the chart does not create them."""
    f = lambda key: Path(material[key]).read_bytes()  # noqa: E731
    out: dict[str, dict[str, bytes]] = {}
    if not v["tls"]["insecure"]:
        t = v["tls"]
        out[t["secretName"]] = {t["certKey"]: f("tls_cert"), t["keyKey"]: f("tls_key"), t["caKey"]: f("ca")}
        out[v["spark"]["caSecretName"]] = {"ca.crt": f("ca")}
    if v["auth"]["enabled"]:
        out[v["auth"]["secretName"]] = {"principals.toml": f("principals"), "signing-keys.toml": f("signing_keys")}
        out[v["spark"]["credentialSecretName"]] = {"tenant.credential": f("tenant_credential")}
    c = v["objectStore"]["credentials"]
    if c["existingSecret"] and not c["fromServiceAccount"]:
        out[c["existingSecret"]] = {c["accessKeyIdKey"]: material["s3_access_key_id"].encode(),
                                    c["secretAccessKeyKey"]: material["s3_secret_access_key"].encode()}
    return out


def write(path: Path, data: bytes, mode: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)


def volume_dir(vol: dict, pod_root: Path, secrets: dict, configmaps: dict, claims: set[str]) -> Path:
    """Writes a pod volume under pod_root/vol/NAME, as the kubelet would; returns it."""
    d = pod_root / "vol" / vol["name"]
    if d.exists():
        return d
    d.mkdir(parents=True)
    for kind, store in [("secret", secrets), ("configMap", configmaps)]:
        src = vol.get(kind)
        if src is None:
            continue
        name = src.get("secretName") if kind == "secret" else src.get("name")
        if name not in store:
            if src.get("optional"):
                return d
            raise Fail(f"volume {vol['name']}: {kind} {name!r} not found (the pod would stay ContainerCreating)")
        data = store[name]
        mode = src.get("defaultMode", 0o644)
        items = src.get("items") or [{"key": k, "path": k} for k in data]
        for it in items:
            if it["key"] not in data:
                raise Fail(f"volume {vol['name']}: {kind} {name!r} has no key {it['key']!r}")
            write(d / it["path"], data[it["key"]], it.get("mode", mode))
        return d
    if "emptyDir" in vol or vol["name"] in claims:
        return d
    raise Fail(f"volume {vol['name']}: unsupported source {sorted(vol)}")


def materialize(sts: dict, pod: str, ip: str, ns: str, pod_root: Path, names: dict, secrets: dict,
                configmaps: dict, bin_dir: str) -> dict:
    spec = sts["spec"]
    pspec = spec["template"]["spec"]
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    vols = {v["name"]: v for v in pspec.get("volumes", [])}
    for c in claims:
        vols.setdefault(c, {"name": c})
    fields = {"metadata.name": pod, "metadata.namespace": ns, "status.podIP": ip, "spec.nodeName": "node-0",
              "spec.serviceAccountName": pspec.get("serviceAccountName", "default")}

    def container(c: dict) -> dict:
        mounts: dict[str, str] = {}
        files: list[tuple[str, str]] = []
        for m in c.get("volumeMounts", []):
            if m["name"] not in vols:
                raise Fail(f"container {c['name']}: volumeMount {m['name']!r} names no volume")
            host = volume_dir(vols[m["name"]], pod_root, secrets, configmaps, claims)
            if m.get("subPath"):
                host = host / m["subPath"]
                if not host.exists():
                    raise Fail(f"container {c['name']}: subPath {m['subPath']!r} of {m['name']!r} does not exist")
            mounts[m["mountPath"]] = str(host)
            if host.is_file():
                files.append((m["mountPath"], str(host)))
        rw = Rewriter(names, mounts, ip)
        # ConfigMap files hold container paths and names too (the TOML settings); each is
        # rewritten once, for the first container that mounts it.
        for m in c.get("volumeMounts", []):
            if "configMap" not in vols[m["name"]]:
                continue
            host = Path(mounts[m["mountPath"]])
            for f in ([host] if host.is_file() else sorted(host.rglob("*"))):
                if f.is_file() and f not in REWRITTEN:
                    REWRITTEN.add(f)
                    f.write_text(rw(f.read_text()))
        # The image's and the runtime's variables; only the declared ones are rewritten below.
        base = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOSTNAME": pod}
        env: dict[str, str] = dict(base)
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = expand_vars(e["value"], env)
            elif "valueFrom" in e:
                vf = e["valueFrom"]
                if "fieldRef" in vf:
                    path = vf["fieldRef"]["fieldPath"]
                    if path not in fields:
                        raise Fail(f"env {e['name']}: fieldRef {path} not simulated")
                    env[e["name"]] = fields[path]
                elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                    kind, ref = ("Secret", vf["secretKeyRef"]) if "secretKeyRef" in vf else ("ConfigMap", vf["configMapKeyRef"])
                    store = secrets if kind == "Secret" else configmaps
                    val = store.get(ref["name"], {}).get(ref["key"])
                    if val is None:
                        if ref.get("optional"):
                            continue
                        raise Fail(f"env {e['name']}: {kind} {ref['name']!r} key {ref['key']!r} not found "
                                   "(CreateContainerConfigError)")
                    env[e["name"]] = val.decode()
                else:
                    raise Fail(f"env {e['name']}: unsupported valueFrom {sorted(vf)}")
            else:
                env[e["name"]] = ""
        env = {k: v if k in base and v == base[k] else rw(v) for k, v in env.items()}
        command = c.get("command") or IMAGE_ENTRYPOINT
        argv = [rw(expand_vars(x, env)) for x in command + c.get("args", [])]
        if argv[: len(IMAGE_ENTRYPOINT)] == IMAGE_ENTRYPOINT:
            argv = argv[len(IMAGE_ENTRYPOINT):]
        ports = {p.get("name", str(p["containerPort"])): {"port": p["containerPort"], "protocol": p.get("protocol", "TCP")}
                 for p in c.get("ports", [])}

        def handler(h: dict | None) -> dict | None:
            if h is None:
                return None
            if "exec" in h:
                return {"exec": [rw(expand_vars(x, env)) for x in h["exec"]["command"]]}
            for kind in ("httpGet", "tcpSocket"):
                if kind in h:
                    port = h[kind]["port"]
                    if isinstance(port, str) and not port.isdigit():
                        if port not in ports:
                            raise Fail(f"container {c['name']}: {kind} names port {port!r}, which it does not declare")
                        port = ports[port]["port"]
                    host = h[kind].get("host") or ip
                    return {kind: {"addr": f"{host}:{int(port)}", "path": h[kind].get("path", "/"),
                                   "scheme": h[kind].get("scheme", "HTTP")}}
            raise Fail(f"container {c['name']}: unsupported handler {sorted(h)}")

        def probe(p: dict | None) -> dict | None:
            if p is None:
                return None
            out = handler(p)
            for k, d in [("initialDelaySeconds", 0), ("periodSeconds", 10), ("timeoutSeconds", 1),
                         ("failureThreshold", 3), ("successThreshold", 1)]:
                out[k] = p.get(k, d)
            return out

        workdir = c.get("workingDir") or IMAGE_WORKDIR
        cwd = rw(workdir)
        if cwd == workdir:
            # Nothing mounted there: a directory of the image's own (empty) filesystem.
            cwd = str(pod_root / "image" / workdir.lstrip("/"))
            Path(cwd).mkdir(parents=True, exist_ok=True)
        return {
            "name": c["name"], "argv": argv, "env": env, "cwd": cwd, "ports": ports,
            "startup": probe(c.get("startupProbe")), "readiness": probe(c.get("readinessProbe")),
            "liveness": probe(c.get("livenessProbe")),
            "pre_stop": handler(c.get("lifecycle", {}).get("preStop")),
        }

    return {
        "name": pod, "statefulset": sts["metadata"]["name"], "ip": ip,
        "component": spec["template"]["metadata"]["labels"].get("app.kubernetes.io/component", ""),
        "grace_seconds": pspec.get("terminationGracePeriodSeconds", 30),
        "init": [container(c) for c in pspec.get("initContainers", [])],
        "containers": [container(c) for c in pspec["containers"]],
    }


def spark_settings(notes: str, names: dict, secrets: dict, spark_root: Path) -> list[str]:
    """The Spark settings NOTES.txt prints, for a Spark outside Kubernetes: the Secrets they
    mount are written under spark_root and their paths rewritten; secretKeyRef env becomes
    spark.executorEnv; spark.jars (a path in an image) is left to the caller."""
    lines = [ln for ln in notes.splitlines() if re.match(r"^spark\.[\w.-]+=", ln)]
    mounts: dict[str, str] = {}
    out: list[str] = []
    for ln in lines:
        key, val = ln.split("=", 1)
        m = re.match(r"spark\.kubernetes\.(driver|executor)\.secrets\.(.+)$", key)
        if m:
            name = m.group(2)
            if name not in secrets:
                raise Fail(f"{key}: Secret {name!r} not found")
            d = spark_root / name
            for k, v in secrets[name].items():
                write(d / k, v, 0o600)
            mounts[val] = str(d)
            continue
        m = re.match(r"spark\.kubernetes\.executor\.secretKeyRef\.(\w+)$", key)
        if m:
            name, _, k = val.partition(":")
            if k not in secrets.get(name, {}):
                raise Fail(f"{key}: Secret {name!r} has no key {k!r}")
            out.append(f"spark.executorEnv.{m.group(1)}={secrets[name][k].decode()}")
            continue
        if key == "spark.jars":
            continue
        out.append(ln)
    rw = Rewriter(names, mounts, None)
    return [rw(x) for x in out]


if __name__ == "__main__":
    sys.exit(main())
