{{/* Chart name (nameOverride replaces it). */}}
{{- define "memaudit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of the chart's own resource names. */}}
{{- define "memaudit.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* name-version, as helm.sh/chart expects. */}}
{{- define "memaudit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every resource carries. */}}
{{- define "memaudit.labels" -}}
helm.sh/chart: {{ include "memaudit.chart" . }}
{{ include "memaudit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: memaudit
{{- end }}

{{/* Labels that select the chart's pods (add app.kubernetes.io/component per workload). */}}
{{- define "memaudit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "memaudit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* ServiceAccount of the chart's pods. */}}
{{- define "memaudit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the MLflow Deployment and Service. */}}
{{- define "memaudit.mlflowName" -}}
{{- printf "%s-mlflow" (include "memaudit.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "true" when the MLflow server keeps a SQLite database on its PVC (runs without an external database, or
logins), else empty. */}}
{{- define "memaudit.mlflowPvc" -}}
{{- if and .Values.mlflow.enabled (or (not .Values.mlflow.backendStore.existingSecret) .Values.mlflow.auth.enabled) }}true{{ end }}
{{- end }}

{{/* MLFLOW_TRACKING_URI of the pipeline pods. */}}
{{- define "memaudit.trackingUri" -}}
{{- if .Values.mlflow.enabled }}
{{- printf "http://%s.%s.svc.cluster.local:%d" (include "memaudit.mlflowName" .) .Release.Namespace (int .Values.mlflow.port) }}
{{- else }}
{{- required "mlflow.trackingUri is required when mlflow.enabled is false" .Values.mlflow.trackingUri }}
{{- end }}
{{- end }}

{{/* The run config (a memaudit config file), with the chart's least-privilege ServiceAccount for the pipeline pods
(with rbac.create, unless one is named). */}}
{{- define "memaudit.runConfig" -}}
{{- $config := deepCopy .Values.config }}
{{- if and .Values.rbac.create (not $config.run.service_account) }}
{{- $_ := set $config.run "service_account" (include "memaudit.serviceAccountName" .) }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Pod-level settings shared by the chart's pods: no API token, non-root, RuntimeDefault seccomp. */}}
{{- define "memaudit.podSpecDefaults" -}}
serviceAccountName: {{ include "memaudit.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Container-level security context shared by the chart's containers. */}}
{{- define "memaudit.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end }}

{{/* Python script of the bucket Job (and of the submit Job's init container): create missing buckets, with
versioning when the first argument is --versioning (an overwritten or deleted object stays recoverable). */}}
{{- define "memaudit.bucketScript" -}}
import os, sys, urllib.parse
from minio import Minio
from minio.versioningconfig import ENABLED, VersioningConfig
url = urllib.parse.urlparse(os.environ["MEMAUDIT_S3_ENDPOINT"])
secure = os.environ.get("MEMAUDIT_S3_SECURE", "false").lower() in ("1", "true", "yes")
client = Minio(url.netloc, access_key=os.environ["MEMAUDIT_S3_ACCESS_KEY"], secret_key=os.environ["MEMAUDIT_S3_SECRET_KEY"], secure=secure)
versioning = sys.argv[1:2] == ["--versioning"]
for bucket in sys.argv[1 + versioning:]:
    if client.bucket_exists(bucket):
        print(f"bucket {bucket} exists")
    else:
        client.make_bucket(bucket)
        if versioning:
            client.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
        print(f"bucket {bucket} created" + (" with versioning" if versioning else ""))
{{- end }}

{{/* Container running the bucket script (env from the run ConfigMap and the S3 Secret). */}}
{{- define "memaudit.bucketContainer" -}}
- name: buckets
  image: {{ .Values.config.run.image_cpu }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["python", "-c", {{ include "memaudit.bucketScript" . | quote }}]
  args:
    {{- if .Values.buckets.versioning }}
    - --versioning
    {{- end }}
    - {{ .Values.s3.bucket | quote }}
    {{- if .Values.mlflow.enabled }}
    - {{ .Values.mlflow.artifactsBucket | quote }}
    {{- end }}
  envFrom:
    - configMapRef:
        name: {{ .Values.config.run.env_config_map }}
    - secretRef:
        name: {{ .Values.config.run.s3_secret }}
  {{- with .Values.config.run.ca_bundle_config_map }}
  env:
    - name: SSL_CERT_FILE
      value: /etc/memaudit/ca/ca.crt
  volumeMounts:
    - name: ca
      mountPath: /etc/memaudit/ca
      readOnly: true
  {{- end }}
  resources:
    {{- toYaml .Values.buckets.resources | nindent 4 }}
  {{- include "memaudit.containerSecurityContext" . | nindent 2 }}
{{- end }}

{{/* The volume of config.run.ca_bundle_config_map (the object store's private CA), when one is named. */}}
{{- define "memaudit.caVolume" -}}
{{- with .Values.config.run.ca_bundle_config_map }}
- name: ca
  configMap:
    name: {{ . }}
{{- end }}
{{- end }}
