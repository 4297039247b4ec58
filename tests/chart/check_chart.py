#!/usr/bin/env python3
"""Checks the Helm chart, the Grafana dashboard and the image recipe against the Rust sources.

Renders deploy/helm/shoal with every file in tests/chart/values/, lints it, validates every
manifest against Kubernetes' strict schemas, and asserts what the binaries need (settings keys
they know, Raft ids and peers, worker ids, the preStop drain, probes on the HTTP paths they
serve). Every file in tests/chart/bad/ must be refused by the values schema, and for the reason
its header names. Offline; run through scripts/chart-check.sh.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate as kv
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "shoal"
VALUES_DIR = ROOT / "tests" / "chart" / "values"
BAD_DIR = ROOT / "tests" / "chart" / "bad"
DASHBOARD = ROOT / "deploy" / "grafana" / "shoal-dashboard.json"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
SPARK_DEFAULTS = ROOT / "deploy" / "spark" / "spark-defaults.conf"
# Oldest Kubernetes the chart claims (Chart.yaml kubeVersion) and the newest with schemas.
KUBE_VERSIONS = ["1.27", kv.utils.major_minor(kv.utils.latest_version())]
NAMESPACE = "shuffle"
APP_VERSION = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
RELEASE = "shoal"


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
            print(f"  FAIL {what}")
        return ok


R = Report()


# ---------------------------------------------------------------------------------------------
# Facts read from the Rust sources, so the chart cannot drift from the binaries.


def rust(path: str) -> str:
    """A source file of the repository (Rust, or the plugin's Java)."""
    return (ROOT / path).read_text()


def const_keys(path: str, name: str) -> set[str]:
    m = re.search(rf"pub const {name}: &\[&str\] = &\[(.*?)\];", rust(path), re.S)
    if not m:
        raise SystemExit(f"cannot find {name} in {path}")
    return set(re.findall(r'"([a-z_]+)"', m.group(1)))


TLS_KEYS = const_keys("proto/src/settings.rs", "TLS_KEYS")
PLUGIN_CONF = rust("shuffle-client/spark/src/main/java/io/shoal/spark/ShoalConf.java")
MASTER_KEYS = const_keys("shuffle-master/src/config.rs", "KEYS") | TLS_KEYS
WORKER_KEYS = const_keys("shuffle-worker/src/config.rs", "KEYS") | TLS_KEYS


def exported_metrics() -> tuple[set[str], set[str]]:
    """Metric names as Prometheus sees them, and the label names of their label sets."""
    names: set[str] = set()
    labels: set[str] = set()
    for path in sorted((ROOT).glob("*/src/**/*.rs")):
        text = path.read_text()
        prefix = re.search(r'Registry::with_prefix\("([a-z_]+)"\)', text)
        if not prefix:
            continue
        for struct in re.finditer(r"derive\([^)]*EncodeLabelSet[^)]*\)\]\s*(?:pub )?struct \w+ \{(.*?)\}", text, re.S):
            labels |= set(re.findall(r"(?:pub )?([a-z_]+): String", struct.group(1)))
        for reg in re.finditer(r'\.register\(\s*"([a-z_]+)",\s*"[^"]*",\s*([^;]+?)\);', text, re.S):
            name, expr = reg.group(1), reg.group(2).strip().rstrip(",").strip()
            ident = re.sub(r"\.clone\(\)$", "", expr).split(".")[-1]
            decl = re.search(rf"(?:let {ident} = |pub {ident}: )([^;\n]+)", text)
            if not decl:
                raise SystemExit(f"{path}: cannot find the type of metric {name} ({ident})")
            kind = decl.group(1)
            full = f"{prefix.group(1)}_{name}"
            if "Histogram" in kind:
                names |= {f"{full}_bucket", f"{full}_sum", f"{full}_count"}
            elif "Counter" in kind:
                # prometheus-client appends _total to counters.
                names.add(f"{full}_total")
            elif "Gauge" in kind:
                names.add(full)
            else:
                raise SystemExit(f"{path}: metric {name} has an unknown type {kind}")
    return names, labels


def http_paths() -> dict[str, set[str]]:
    """HTTP paths each binary serves."""
    # Match arms, alternatives included (`"/status.json" | "/metrics" | "/" =>`).
    master = set(re.findall(r'"(/[a-z.]*)"\s*(?:=>|\|)', rust("shuffle-master/src/web.rs")))
    # The worker's node module is node.rs or node/*.rs.
    node = "".join(p.read_text() for p in sorted((ROOT / "shuffle-worker/src").glob("node*/**/*.rs"))
                   + [ROOT / "shuffle-worker/src/node.rs"] if p.exists())
    worker = set(re.findall(r'\("(/[a-z.]+)", ', node))
    return {"master": master, "worker": worker}


# ---------------------------------------------------------------------------------------------
# Rendering.


class StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (a template slip PyYAML would hide)."""


def _no_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def render(chart: helm.Chart, values: dict) -> tuple[list[dict], str]:
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict] = []
    notes = ""
    for name, text in sorted(out.items()):
        if name.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.load_all(text, Loader=StrictLoader):
            if doc:
                docs.append(doc)
    return docs, notes


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = find(docs, kind, name)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name}, found {len(found)}")
    return found[0]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------------------------------------
# What a rendered release must satisfy.


def check_release(label: str, values: dict, docs: list[dict], notes: str, merged: dict) -> None:
    m, w = merged["masters"], merged["workers"]
    full = merged.get("fullnameOverride") or RELEASE
    sts_m, sts_w = f"{full}-master", f"{full}-worker"
    hl_m, hl_w = f"{full}-master-headless", f"{full}-worker-headless"
    domain = merged["clusterDomain"]
    c = lambda ok, what: R.check(ok, f"[{label}] {what}")  # noqa: E731

    # Kubernetes schemas, strict (unknown fields are errors), oldest and newest versions.
    for doc in docs:
        for ver in KUBE_VERSIONS:
            try:
                kv.validate(doc, ver, strict=True)
                c(True, "")
            except kv.utils.SchemaNotFoundError:
                c(doc["apiVersion"] == "monitoring.coreos.com/v1", f"no schema for {doc['kind']} {doc['apiVersion']}")
            except kv.utils.ValidationError as e:
                c(False, f"{doc['kind']}/{doc['metadata']['name']} invalid for {ver}: {e.message} "
                         f"at {'.'.join(map(str, e.absolute_path))}")
        c(doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']} is namespaced")

    master = one(docs, "StatefulSet", sts_m)
    worker = one(docs, "StatefulSet", sts_w)
    c(len(find(docs, "StatefulSet")) == 2, "exactly two StatefulSets")
    cm = one(docs, "ConfigMap", f"{full}-config")
    mtoml = tomllib.loads(cm["data"]["master.toml"])
    wtoml = tomllib.loads(cm["data"]["worker.toml"])
    c(set(mtoml) <= MASTER_KEYS, f"master.toml keys the master knows: {set(mtoml) - MASTER_KEYS}")
    c(set(wtoml) <= WORKER_KEYS, f"worker.toml keys the worker knows: {set(wtoml) - WORKER_KEYS}")
    paths = http_paths()

    for sts, svc_name, role, v, toml in [(master, hl_m, "master", m, mtoml), (worker, hl_w, "worker", w, wtoml)]:
        spec = sts["spec"]
        pod = spec["template"]["spec"]
        cont = pod["containers"][0]
        c(spec["replicas"] == v["replicas"], f"{role} replicas")
        c(spec["podManagementPolicy"] == "Parallel", f"{role} pods start in parallel")
        c(spec["updateStrategy"]["rollingUpdate"]["partition"] == v["updatePartition"], f"{role} update partition")
        c(matches(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"]), f"{role} selector")
        svc = one(docs, "Service", svc_name)
        c(spec["serviceName"] == svc_name, f"{role} serviceName is its headless Service")
        c(svc["spec"].get("clusterIP") == "None", f"{role} Service is headless")
        c(svc["spec"].get("publishNotReadyAddresses") is True, f"{role} DNS exists before readiness")
        c(matches(svc["spec"]["selector"], spec["template"]["metadata"]["labels"]), f"{role} Service selects pods")
        ports = {p["name"]: p for p in cont["ports"]}
        c(ports["quic"]["protocol"] == "UDP" and ports["http"]["protocol"] == "TCP", f"{role} port protocols")
        for sp in svc["spec"]["ports"]:
            c(sp["targetPort"] in ports and ports[sp["targetPort"]]["protocol"] == sp["protocol"],
              f"{role} Service port {sp['name']}")
        c(toml["listen"] == f"0.0.0.0:{ports['quic']['containerPort']}", f"{role} listens on its QUIC port")
        c(toml["http_listen"] == f"0.0.0.0:{ports['http']['containerPort']}", f"{role} serves HTTP on its port")
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"]:
            p = cont.get(probe, {}).get("httpGet")
            c(p is not None and p["port"] in ("http", ports["http"]["containerPort"]), f"{role} {probe} on HTTP")
            c(p is not None and p["path"] in paths[role], f"{role} {probe} path {p and p['path']} is served")
        if role == "worker":
            c(cont["readinessProbe"]["httpGet"]["path"] == "/readyz", "worker readiness turns off while draining")
        # Storage on a PVC mounted where data_dir points.
        vct = spec["volumeClaimTemplates"]
        c(len(vct) == 1 and vct[0]["spec"]["resources"]["requests"]["storage"] == v["persistence"]["size"],
          f"{role} PVC size")
        c(vct[0]["spec"].get("storageClassName", "") == v["persistence"]["storageClass"], f"{role} storage class")
        mounts = {vm["name"]: vm for vm in cont["volumeMounts"]}
        c(mounts.get(vct[0]["metadata"]["name"], {}).get("mountPath") == toml["data_dir"], f"{role} data_dir on PVC")
        # TLS files from the Secret, or insecure for throwaway clusters only.
        vols = {vol["name"]: vol for vol in pod["volumes"]}
        if merged["tls"]["insecure"]:
            c(toml.get("tls_insecure") is True and "tls" not in vols, f"{role} insecure TLS")
        else:
            tls = merged["tls"]
            c(vols.get("tls", {}).get("secret", {}).get("secretName") == tls["secretName"], f"{role} TLS Secret")
            base = mounts["tls"]["mountPath"]
            for key, vkey in [("tls_cert", "certKey"), ("tls_key", "keyKey"), ("tls_ca", "caKey")]:
                c(toml.get(key) == f"{base}/{tls[vkey]}", f"{role} {key} is the mounted Secret key")
        # Non-root, nothing writable but the volumes.
        c(pod["securityContext"].get("runAsNonRoot") is True, f"{role} runs as non-root")
        c(cont["securityContext"].get("allowPrivilegeEscalation") is False, f"{role} no privilege escalation")
        c("checksum/config" in spec["template"]["metadata"].get("annotations", {}), f"{role} rolls on config change")
        tag = merged["image"]["tag"] or APP_VERSION
        c(cont["image"] == f"{merged['image']['repository']}:{tag}", f"{role} image")

    # Masters: Raft peers from pod DNS names; the id the start script computes must be the
    # peers entry naming that very pod.
    peers = dict(p.split("=", 1) for p in mtoml["peers"].split(","))
    c(sorted(map(int, peers)) == list(range(1, m["replicas"] + 1)), "master ids 1..N")
    quic_m = m["ports"]["quic"]
    endpoints = [f"{sts_m}-{i}.{hl_m}.{NAMESPACE}.svc.{domain}:{quic_m}" for i in range(m["replicas"])]
    c([peers[str(i + 1)] for i in range(m["replicas"])] == endpoints, "peers are the pods' DNS names")
    c(wtoml["masters"] == ",".join(endpoints), "workers know every master")
    mcont = master["spec"]["template"]["spec"]["containers"][0]
    for ordinal in {0, m["replicas"] - 1}:
        out = run_stubbed(mcont, {"POD_NAME": f"{sts_m}-{ordinal}"}, "shuffle-master")
        got = dict(re.findall(r"(\w+)=(\S*)", out))
        c(got.get("SHOAL_ID") == str(ordinal + 1), f"master pod {ordinal} takes id {ordinal + 1} (got {out!r})")
        c(peers.get(got.get("SHOAL_ID", "")) == endpoints[ordinal], f"master id {ordinal + 1} is its own peer")
        c("--config /etc/shoal/master.toml" in out, "master reads the mounted config")
    c(any(vm["mountPath"] == "/etc/shoal/master.toml" for vm in mcont["volumeMounts"]), "master config mounted")
    mpdb = one(docs, "PodDisruptionBudget", sts_m) if m["pdb"]["enabled"] else None
    if mpdb:
        c(mpdb["spec"].get("maxUnavailable") == 1, "master PDB keeps the Raft majority")
        c(matches(mpdb["spec"]["selector"]["matchLabels"], master["spec"]["template"]["metadata"]["labels"]),
          "master PDB selects masters")
    client = one(docs, "Service", sts_m)
    c(client["spec"].get("clusterIP") != "None", "masters have a client Service")

    # Workers: the pod name is the worker id; the advertised address is the pod's DNS name.
    wpod = worker["spec"]["template"]["spec"]
    wcont = wpod["containers"][0]
    env = env_of(wcont)
    c(env.get("SHOAL_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
      "worker id is the pod name")
    c(env.get("SHOAL_ADVERTISE", {}).get("value")
      == f"$(POD_NAME).{hl_w}.$(POD_NAMESPACE).svc.{domain}:{w['ports']['quic']}", "worker advertises its DNS name")
    names = list(env)
    c(names.index("POD_NAME") < names.index("SHOAL_ADVERTISE") and names.index("POD_NAMESPACE") < names.index(
        "SHOAL_ADVERTISE"), "advertise refers to variables defined before it")
    os_ = merged["objectStore"]
    prefix = os_["prefix"].strip("/")
    url = f"s3://{os_['bucket']}/{prefix}" if prefix else f"s3://{os_['bucket']}"
    c(wtoml["object_store"] == url, f"object store URL {wtoml['object_store']}")
    creds = os_["credentials"]
    if creds["fromServiceAccount"]:
        c("AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env, "no keys with a pod identity")
    else:
        secret = creds["existingSecret"] or f"{full}-s3"
        for var, key in [("AWS_ACCESS_KEY_ID", creds["accessKeyIdKey"]),
                         ("AWS_SECRET_ACCESS_KEY", creds["secretAccessKeyKey"])]:
            ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
            c(ref == {"name": secret, "key": key}, f"{var} from Secret {secret} key {key}")
        created = find(docs, "Secret", f"{full}-s3")
        if creds["existingSecret"]:
            c(not created, "no Secret created next to an existing one")
        else:
            c(len(created) == 1 and set(created[0]["data"]) == {creds["accessKeyIdKey"], creds["secretAccessKeyKey"]},
              "S3 Secret created with the referenced keys")
    if os_["endpoint"]:
        c(env.get("AWS_ENDPOINT_URL", {}).get("value") == os_["endpoint"], "S3 endpoint")
    if os_["region"]:
        c(env.get("AWS_REGION", {}).get("value") == os_["region"], "S3 region")

    dec = w["decommission"]
    grace = wpod["terminationGracePeriodSeconds"]
    if dec["enabled"]:
        cmd = wcont["lifecycle"]["preStop"]["exec"]["command"]
        out = run_stubbed({"args": cmd}, {"POD_NAME": f"{sts_w}-3"}, "shoal")
        argv = shlex.split(out.split("ARGS:", 1)[1]) if "ARGS:" in out else []
        want = ["worker", "decommission", f"{sts_w}-3", "--wait", "--timeout", f"{dec['timeoutSeconds']}s",
                "--masters", ",".join(endpoints)]
        c(argv[: len(want)] == want, f"preStop drains the pod's worker: {argv}")
        tls_flags = ["--tls-insecure"] if merged["tls"]["insecure"] else [
            "--tls-ca", f"/etc/shoal/tls/{merged['tls']['caKey']}"]
        c(argv[len(want): len(want) + len(tls_flags)] == tls_flags, "preStop trusts the cluster CA")
        c(grace > dec["timeoutSeconds"], f"grace period {grace}s outlasts the drain timeout {dec['timeoutSeconds']}s")
    else:
        c("lifecycle" not in wcont, "no preStop without decommission")
    if w["waitForMasters"]:
        init = wpod["initContainers"][0]
        out = run_stubbed(init, {}, "shoal", stub_exit=0)
        c(f"--masters {','.join(endpoints)}" in out, "init container waits for the masters")
    wpdb = find(docs, "PodDisruptionBudget", sts_w)
    c(bool(wpdb) == w["pdb"]["enabled"], "worker PDB as configured")
    if wpdb:
        c(wpdb[0]["spec"]["maxUnavailable"] == w["pdb"]["maxUnavailable"], "worker PDB budget")
        c(matches(wpdb[0]["spec"]["selector"]["matchLabels"], worker["spec"]["template"]["metadata"]["labels"]),
          "worker PDB selects workers")

    sm = find(docs, "ServiceMonitor")
    c(bool(sm) == merged["serviceMonitor"]["enabled"], "ServiceMonitor only when enabled")
    for mon in sm:
        sel = mon["spec"]["selector"]["matchLabels"]
        scraped = [s for s in find(docs, "Service") if matches(sel, s["metadata"]["labels"])]
        c(sorted(s["metadata"]["name"] for s in scraped) == sorted([hl_m, hl_w]), "ServiceMonitor scrapes both roles")
        for ep in mon["spec"]["endpoints"]:
            c(all(any(p["name"] == ep["port"] for p in s["spec"]["ports"]) for s in scraped), "scrape port exists")
            c(ep["path"] == "/metrics" and "/metrics" in paths["master"] and "/metrics" in paths["worker"],
              "scrape path is served")
        for k, v in merged["serviceMonitor"]["labels"].items():
            c(mon["metadata"]["labels"].get(k) == v, f"ServiceMonitor label {k}")

    # The Spark settings users copy.
    for line in ["spark.shuffle.manager=io.shoal.spark.ShoalShuffleManager",
                 "spark.shuffle.sort.io.plugin.class=io.shoal.spark.ShoalShuffleDataIO",
                 f"spark.shoal.master.endpoints={','.join(endpoints)}",
                 f"spark.jars={merged['spark']['jars']}",
                 "spark.dynamicAllocation.shuffleTracking.enabled=false"]:
        c(line in notes.splitlines(), f"NOTES prints {line}")
    # Readers learn the store from the masters; printing it would suggest it is needed.
    c(not any(l.startswith("spark.shoal.objectStore.url=") for l in notes.splitlines()),
      "NOTES leaves the object store to the masters")
    tls_line = ("spark.shoal.tls.insecure=true" if merged["tls"]["insecure"]
                else f"spark.shoal.tls.ca={merged['spark']['caMountPath']}/ca.crt")
    c(tls_line in notes.splitlines(), f"NOTES prints {tls_line}")
    # The keys printed for Spark must be ones the plugin reads.
    plugin_keys = set(re.findall(r'"(spark\.shoal\.[A-Za-z.]+)"', PLUGIN_CONF))
    for key in re.findall(r"^(spark\.shoal\.[A-Za-z.]+)=", notes, re.M):
        c(key in plugin_keys, f"NOTES key {key} is read by the Spark plugin")


def run_stubbed(container: dict, env: dict[str, str], program: str, stub_exit: int = 0) -> str:
    """Runs a container's command with `program` replaced by a stub that prints its env and argv."""
    argv = container.get("command", []) + container.get("args", [])
    with tempfile.TemporaryDirectory() as d:
        stub = Path(d) / program
        log = Path(d) / "calls"
        # Written to a file, not stdout: the commands may send the program's output elsewhere.
        stub.write_text(f'#!/bin/sh\n{{ echo "SHOAL_ID=${{SHOAL_ID:-}}"; printf "ARGS:"\n'
                        f'for a in "$@"; do printf " %s" "$a"; done; echo; }} >> {log}\nexit {stub_exit}\n')
        stub.chmod(0o755)
        full_env = {"PATH": f"{d}:/usr/bin:/bin", **env}
        subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=20)
        return log.read_text() if log.exists() else ""


# ---------------------------------------------------------------------------------------------
# Bad values: refused, and for the reason their header names.


def check_bad(chart: helm.Chart) -> None:
    files = sorted(BAD_DIR.glob("*.yaml"))
    R.check(len(files) >= 8, f"at least 8 bad values files (found {len(files)})")
    for f in files:
        text = f.read_text()
        expect = re.search(r"^# expect: (.+)$", text, re.M)
        expect_path = re.search(r"^# expect-path: ?(.*)$", text, re.M)
        if not R.check(bool(expect and expect_path), f"{f.name} names its expected error"):
            continue
        try:
            chart.render(load_values(f), name=RELEASE, namespace=NAMESPACE)
            R.check(False, f"{f.name} was rendered; it must be refused")
            continue
        except helm.HelmValuesError as e:
            msg = str(e)
        except helm.HelmError as e:
            R.check(False, f"{f.name} failed, but not in the values schema: {e}")
            continue
        errors = re.findall(r"^- at '([^']*)': (.*)$", msg, re.M)
        allowed = expect_path.group(1).split() or [""]
        ok = bool(errors) and expect.group(1) in msg and all(p in allowed for p, _ in errors)
        R.check(ok, f"{f.name} refused for its reason ({expect_path.group(1)}: {expect.group(1)}); got {errors}")
        if ok:
            print(f"  refused {f.name}: {errors[0][0] or '/'}: {errors[0][1]}")


# ---------------------------------------------------------------------------------------------
# Dashboard, image recipe, Spark example.


def check_dashboard() -> None:
    names, labels = exported_metrics()
    R.check(len([n for n in names if n.startswith("shoal_worker_")]) >= 8, "worker metrics found in the source")
    R.check(len([n for n in names if n.startswith("shoal_master_")]) >= 5, "master metrics found in the source")
    try:
        dash = json.loads(DASHBOARD.read_text())
    except (OSError, json.JSONDecodeError) as e:
        R.check(False, f"dashboard is JSON: {e}")
        return
    R.check(bool(dash.get("uid")) and bool(dash.get("title")), "dashboard has a uid and title")
    exprs = []
    ids = []

    def walk(panels: list) -> None:
        for p in panels:
            ids.append(p.get("id"))
            exprs.extend(t["expr"] for t in p.get("targets", []) if "expr" in t)
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    R.check(len(ids) == len(set(ids)), "panel ids are unique")
    used = set()
    for e in exprs:
        used |= set(re.findall(r"\bshoal_[a-z0-9_]+\b", e))
    R.check(len(exprs) >= 10 and len(used) >= 10, f"dashboard queries {len(used)} metrics in {len(exprs)} queries")
    for n in sorted(used):
        R.check(n in names, f"dashboard metric {n} is exported by Shoal")
    # Grouping labels: Shoal's label sets, Prometheus target labels, or histogram buckets.
    target_labels = {"pod", "instance", "namespace", "job", "service", "le"}
    for e in exprs:
        for group in re.findall(r"\b(?:by|on|without)\s*\(([^)]*)\)", e):
            for lab in filter(None, (x.strip() for x in group.split(","))):
                R.check(lab in labels | target_labels, f"label {lab} in {e!r} exists")
    unused = sorted(n for n in names if not n.endswith(("_sum", "_count")) and n not in used
                    and not (n.endswith("_bucket") and n in used))
    if unused:
        print(f"  note: metrics not on the dashboard: {', '.join(unused)}")


def check_image() -> None:
    text = DOCKERFILE.read_text()
    bins = set()
    for crate in ["shuffle-master", "shuffle-worker", "shuffle-client"]:
        manifest = tomllib.loads((ROOT / crate / "Cargo.toml").read_text())
        found = [b["name"] for b in manifest.get("bin", [])]
        if not found and (ROOT / crate / "src" / "main.rs").exists():
            found = [manifest["package"]["name"]]
        bins |= set(found)
        R.check(f"-p {manifest['package']['name']}" in text, f"Dockerfile builds package {crate}")
    R.check(bins == {"shuffle-master", "shuffle-worker", "shoal"}, f"binaries are {sorted(bins)}")
    for b in bins:
        R.check(f"target/release/{b}" in text, f"Dockerfile copies {b}")
    R.check("--locked" in text and "libclang-dev" in text, "Dockerfile builds locked, with libclang for RocksDB")
    R.check(re.search(r"^USER \d+", text, re.M) is not None, "image runs as a numeric non-root user")
    ignore = (ROOT / ".dockerignore").read_text().split()
    R.check("target" in ignore or "target/" in ignore or "/target" in ignore, ".dockerignore skips target/")


def check_spark_defaults() -> None:
    conf = {}
    for line in SPARK_DEFAULTS.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf[key] = value.strip()
    want = {
        "spark.shuffle.manager": "io.shoal.spark.ShoalShuffleManager",
        "spark.shuffle.sort.io.plugin.class": "io.shoal.spark.ShoalShuffleDataIO",
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "false",
        "spark.shuffle.service.enabled": "false",
    }
    for k, v in want.items():
        R.check(conf.get(k) == v, f"spark-defaults.conf sets {k}={v}")
    R.check("spark.shoal.master.endpoints" in conf, "spark-defaults.conf names the masters")
    plugin_keys = set(re.findall(r'"(spark\.shoal\.[A-Za-z.]+)"', PLUGIN_CONF))
    R.check(len(plugin_keys) >= 4, "the Spark plugin's settings are found in ShoalConf.java")
    for key in (k for k in conf if k.startswith("spark.shoal.")):
        R.check(key in plugin_keys, f"spark-defaults.conf key {key} is read by the plugin")


# ---------------------------------------------------------------------------------------------


def self_test() -> None:
    """The validators must catch what they exist to catch; a vacuous pass is a failure."""
    bad = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "x"},
           "spec": {"serviceName": "x", "selector": {}, "template": {"spec": {"containers": [],
                                                                              "bogusField": 1}}}}
    try:
        kv.validate(bad, KUBE_VERSIONS[-1], strict=True)
        R.check(False, "kubernetes-validate strict mode rejects an unknown field")
    except kv.utils.ValidationError:
        R.check(True, "")
    try:
        yaml.load("a: 1\na: 2\n", Loader=StrictLoader)
        R.check(False, "duplicate YAML keys are refused")
    except yaml.YAMLError:
        R.check(True, "")


def main() -> int:
    t0 = time.time()
    print(f"helm SDK {helm.helm_sdk_version()}, Kubernetes schemas {', '.join(KUBE_VERSIONS)} (strict)")
    self_test()
    chart = helm.Chart.load(CHART)
    files = sorted(VALUES_DIR.glob("*.yaml"))
    R.check(len(files) >= 3, "at least three values files")
    for f in files:
        print(f"values {f.name}")
        values = load_values(f)
        for kube in [KUBE_VERSIONS[0], KUBE_VERSIONS[-1]]:
            report = helm.lint(CHART, values, strict=True, kube_version=f"v{kube}.0")
            problems = [msg for msg in report["messages"] if msg["severity"] >= 2] + report.get("errors", [])
            R.check(not problems, f"[{f.name}] helm lint --strict (Kubernetes {kube}): {problems}")
        try:
            docs, notes = render(chart, values)
        except (helm.HelmError, yaml.YAMLError) as e:
            R.check(False, f"[{f.name}] renders: {e}")
            continue
        kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
        print(f"  {len(docs)} manifests: {', '.join(kinds)}")
        merged = chart.merge_values(values)
        try:
            check_release(f.name, values, docs, notes, merged)
        except (AssertionError, KeyError, IndexError, TypeError) as e:
            R.check(False, f"[{f.name}] manifest shape: {type(e).__name__} {e}")
    print("bad values")
    check_bad(chart)
    print("dashboard, image, Spark example")
    check_dashboard()
    check_image()
    check_spark_defaults()
    chart.close()
    took = time.time() - t0
    print(f"chart check: {R.passed} passed, {len(R.failures)} failed in {took:.1f}s")
    for f in R.failures:
        print(f"  FAILED {f}")
    return 1 if R.failures else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
