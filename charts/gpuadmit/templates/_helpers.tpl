{{/* Chart name, truncated to the 63 characters Kubernetes allows in a label. */}}
{{- define "gpuadmit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-gpuadmit, or the release name when it already says gpuadmit. */}}
{{- define "gpuadmit.fullname" -}}
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

{{- define "gpuadmit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gpuadmit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpuadmit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gpuadmit.labels" -}}
helm.sh/chart: {{ include "gpuadmit.chart" . }}
{{ include "gpuadmit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gpuadmit
{{- end }}

{{- define "gpuadmit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gpuadmit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gpuadmit.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the webhook serving certificate. */}}
{{- define "gpuadmit.webhookCertSecret" -}}
{{- printf "%s-webhook-tls" (include "gpuadmit.fullname" .) }}
{{- end }}

{{- define "gpuadmit.webhookServiceName" -}}
{{- include "gpuadmit.fullname" . }}
{{- end }}

{{/* Rules for namespaced resources, shared by the cluster-wide and the per-namespace variant.
     gpuworkloads get: re-read after a write conflict. */}}
{{- define "gpuadmit.namespacedRules" -}}
# create: the mirror GPUWorkload of a native workload in a managed namespace (docs/native-workloads.md);
# patch: the class label, and a mirror's spec kept in line with its native object; delete: the
# stale mirror of an earlier incarnation of a native object (a StatefulSet's pod made again).
- apiGroups: ["gpuadmit.io"]
  resources: ["gpuworkloads"]
  verbs: ["get", "list", "watch", "patch", "create", "delete"]
- apiGroups: ["gpuadmit.io"]
  resources: ["gpuworkloads/status"]
  verbs: ["patch"]
# patch: a gated native pod released (pinning node affinity added, scheduling gate removed).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "create", "delete", "patch"]
# Native Jobs of managed namespaces: suspended and resumed as their mirrors are decided.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "patch"]
# Kubeflow PyTorchJobs and KubeRay RayJobs likewise, when their CRDs are installed (discovered at
# start-up and on resync; a rule for an absent resource grants nothing and breaks nothing).
- apiGroups: ["kubeflow.org"]
  resources: ["pytorchjobs"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if and .peering (not .allNamespaces) }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}
