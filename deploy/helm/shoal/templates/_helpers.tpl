{{/* Names. */}}
{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Names are cut at 40 so "<fullname>-worker-headless" and pod names fit DNS labels. */}}
{{- define "shoal.master.name" -}}{{ include "shoal.fullname" . }}-master{{- end -}}
{{- define "shoal.master.headless" -}}{{ include "shoal.fullname" . }}-master-headless{{- end -}}
{{- define "shoal.worker.name" -}}{{ include "shoal.fullname" . }}-worker{{- end -}}
{{- define "shoal.worker.headless" -}}{{ include "shoal.fullname" . }}-worker-headless{{- end -}}
{{- define "shoal.config.name" -}}{{ include "shoal.fullname" . }}-config{{- end -}}

{{- define "shoal.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shoal.labels" -}}
helm.sh/chart: {{ include "shoal.chart" . }}
{{ include "shoal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shoal
{{- end -}}

{{- define "shoal.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "shoal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "shoal.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret the workers read S3 keys from, or "" when they use the pod's identity. */}}
{{- define "shoal.s3.secretName" -}}
{{- $c := .Values.objectStore.credentials -}}
{{- if $c.fromServiceAccount -}}
{{- else if $c.existingSecret -}}
{{- $c.existingSecret -}}
{{- else -}}
{{- include "shoal.fullname" . }}-s3
{{- end -}}
{{- end -}}

{{- define "shoal.objectStore.url" -}}
{{- $prefix := trimAll "/" .Values.objectStore.prefix -}}
{{- if $prefix -}}
{{- printf "s3://%s/%s" .Values.objectStore.bucket $prefix -}}
{{- else -}}
{{- printf "s3://%s" .Values.objectStore.bucket -}}
{{- end -}}
{{- end -}}

{{/* DNS name of master pod N (0-based ordinal). */}}
{{- define "shoal.master.host" -}}
{{- $ := index . 0 -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "shoal.master.name" $) (index . 1) (include "shoal.master.headless" $) $.Release.Namespace $.Values.clusterDomain -}}
{{- end -}}

{{/* Every master's QUIC endpoint, HOST:PORT comma separated. */}}
{{- define "shoal.master.endpoints" -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.masters.replicas) -}}
{{- $eps = append $eps (printf "%s:%d" (include "shoal.master.host" (list $ $i)) (int $.Values.masters.ports.quic)) -}}
{{- end -}}
{{- join "," $eps -}}
{{- end -}}

{{/* Raft peers: master id = pod ordinal + 1, as the container's start command computes. */}}
{{- define "shoal.master.peers" -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.masters.replicas) -}}
{{- $peers = append $peers (printf "%d=%s:%d" (add $i 1) (include "shoal.master.host" (list $ $i)) (int $.Values.masters.ports.quic)) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{- define "shoal.tls.dir" -}}/etc/shoal/tls{{- end -}}

{{/* TOML lines for the TLS settings both binaries share. */}}
{{- define "shoal.tls.toml" -}}
{{- if .Values.tls.insecure -}}
tls_insecure = true
{{- else -}}
tls_cert = {{ printf "%s/%s" (include "shoal.tls.dir" .) .Values.tls.certKey | toJson }}
tls_key = {{ printf "%s/%s" (include "shoal.tls.dir" .) .Values.tls.keyKey | toJson }}
tls_ca = {{ printf "%s/%s" (include "shoal.tls.dir" .) .Values.tls.caKey | toJson }}
{{- end -}}
{{- end -}}

{{/* The `shoal` CLI's TLS flags inside a Shoal pod: trust the cluster CA and present the
     mounted node certificate, so the CLI calls as a cluster node (which may make any call,
     admin calls included) and the pods need no admin credential. */}}
{{- define "shoal.tls.cliFlags" -}}
{{- if .Values.tls.insecure -}}
--tls-insecure
{{- else -}}
--tls-ca {{ printf "%s/%s" (include "shoal.tls.dir" .) .Values.tls.caKey }} --tls-cert {{ printf "%s/%s" (include "shoal.tls.dir" .) .Values.tls.certKey }} --tls-key {{ printf "%s/%s" (include "shoal.tls.dir" .) .Values.tls.keyKey }}
{{- end -}}
{{- end -}}

{{- define "shoal.auth.dir" -}}/etc/shoal/auth{{- end -}}

{{/* TOML lines for the master's application authentication. */}}
{{- define "shoal.auth.toml" -}}
{{- $a := .Values.auth -}}
{{- if $a.enabled -}}
auth_principals = {{ printf "%s/principals.toml" (include "shoal.auth.dir" .) | toJson }}
auth_signing_keys = {{ printf "%s/signing-keys.toml" (include "shoal.auth.dir" .) | toJson }}
{{- with $a.tokenTtl }}
token_ttl = {{ . | toJson }}
{{- end }}
{{- with $a.capabilityTtl }}
capability_ttl = {{ . | toJson }}
{{- end }}
{{- else -}}
auth_disabled = true
{{- end -}}
{{- end -}}

{{/* The auth Secret, masters only: the two files the masters read, nothing else. */}}
{{- define "shoal.auth.volume" -}}
{{- if .Values.auth.enabled -}}
- name: auth
  secret:
    secretName: {{ .Values.auth.secretName }}
    defaultMode: 0440
    items:
      - key: principals.toml
        path: principals.toml
      - key: signing-keys.toml
        path: signing-keys.toml
{{- end }}
{{- end -}}

{{- define "shoal.auth.mount" -}}
{{- if .Values.auth.enabled -}}
- name: auth
  mountPath: {{ include "shoal.auth.dir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* A map of settings as TOML lines; strings are quoted (a JSON string is a TOML string),
     numbers go through int64 so a large one never prints as 1e+06. */}}
{{- define "shoal.toml" -}}
{{- $lines := list -}}
{{- range $k, $v := . -}}
{{- if kindIs "string" $v -}}
{{- $lines = append $lines (printf "%s = %s" $k (toJson $v)) -}}
{{- else if kindIs "bool" $v -}}
{{- $lines = append $lines (printf "%s = %t" $k $v) -}}
{{- else -}}
{{- $lines = append $lines (printf "%s = %d" $k (int64 $v)) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end -}}

{{- define "shoal.tls.volume" -}}
{{- if not .Values.tls.insecure -}}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "shoal.tls.mount" -}}
{{- if not .Values.tls.insecure -}}
- name: tls
  mountPath: {{ include "shoal.tls.dir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* podAntiAffinity from a mode: soft, hard or none; an explicit affinity wins. */}}
{{- define "shoal.affinity" -}}
{{- $ := index . 0 -}}
{{- $role := index . 1 -}}
{{- $v := index . 2 -}}
{{- if $v.affinity -}}
affinity:
  {{- toYaml $v.affinity | nindent 2 }}
{{- else if eq $v.podAntiAffinity "hard" -}}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "shoal.selectorLabels" $ | nindent 12 }}
            app.kubernetes.io/component: {{ $role }}
{{- else if eq $v.podAntiAffinity "soft" -}}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "shoal.selectorLabels" $ | nindent 14 }}
              app.kubernetes.io/component: {{ $role }}
{{- end }}
{{- end -}}
