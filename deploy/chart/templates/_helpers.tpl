{{/*
Names, labels, the image and the security settings every tensile pod shares. tensile.manifests
(Python) builds the same virtual-node Deployment for `tensile join`; tests/test_chart.py keeps them equal.
*/}}

{{- define "tensile.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name: "tensile" for a release called tensile. */}}
{{- define "tensile.fullname" -}}
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

{{/* Selector labels; call with (dict "root" $ "component" "webhook"). */}}
{{- define "tensile.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tensile.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Object labels: the selector labels, the chart and Helm. */}}
{{- define "tensile.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "tensile.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "tensile.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* True (non-empty) for the upper-cluster components; a lowerCluster install renders none of them. */}}
{{- define "tensile.upper" -}}
{{- if not .Values.lowerCluster.enabled }}true{{ end }}
{{- end }}

{{/* The rules of one role from files/rbac-rules.yaml (generated from tensile.rbac.chart_rules());
call with (dict "root" $ "role" "webhook") and, for a virtual node's own resourceNames, "node" NAME. */}}
{{- define "tensile.rules" -}}
{{- $text := .root.Files.Get "files/rbac-rules.yaml" }}
{{- if .node }}{{ $text = replace "__NODE__" .node $text }}{{ end }}
{{- $rules := fromYaml $text }}
{{- if not (hasKey $rules .role) }}{{ fail (printf "files/rbac-rules.yaml has no %q rules" .role) }}{{ end }}
{{- toYaml (index $rules .role) }}
{{- end }}

{{- define "tensile.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "tensile.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* imagePullSecrets, nodeSelector, tolerations, affinity, priorityClassName: only when set. */}}
{{- define "tensile.podPlacement" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Liveness on /healthz and readiness on /readyz, served by every tensile component (tensile/kube/serving.py). */}}
{{- define "tensile.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  initialDelaySeconds: 10
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}

{{/* The webhook's serving certificate comes from cert-manager: "true" or empty. */}}
{{- define "tensile.webhook.certManager" -}}
{{- $mode := toString .Values.webhook.certManager.enabled }}
{{- if eq $mode "auto" }}
{{- if .Capabilities.APIVersions.Has "cert-manager.io/v1" }}true{{ end }}
{{- else if eq $mode "true" }}true
{{- else if ne $mode "false" }}{{ fail (printf "webhook.certManager.enabled must be auto, true or false, not %q" $mode) }}
{{- end }}
{{- end }}
