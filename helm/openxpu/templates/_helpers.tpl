{{/* Names. */}}
{{- define "openxpu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "openxpu.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "openxpu.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "openxpu.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "openxpu.operatorName" -}}
{{- printf "%s-operator" (include "openxpu.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "openxpu.hooksName" -}}
{{- printf "%s-hooks" (include "openxpu.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "openxpu.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "openxpu.labels" -}}
helm.sh/chart: {{ include "openxpu.chart" . }}
{{ include "openxpu.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: openxpu
{{- end }}

{{- define "openxpu.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openxpu.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "openxpu.operatorSelectorLabels" -}}
{{ include "openxpu.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels for Prometheus Operator objects: ours plus exporter.serviceMonitor.additionalLabels. */}}
{{- define "openxpu.monitoringLabels" -}}
{{ include "openxpu.labels" . }}
{{- with ((.Values.exporter | default dict).serviceMonitor | default dict).additionalLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* true when exporter.serviceMonitor.enabled: the chart's PrometheusRule, the operator's
ServiceMonitor and the operator's right to manage the exporter's ServiceMonitor. */}}
{{- define "openxpu.monitoring" -}}
{{- if ((.Values.exporter | default dict).serviceMonitor | default dict).enabled }}true{{ end }}
{{- end }}

{{/*
The OpenXPU image: [registry/]repository[:tag][@digest]. global.imageRegistry wins over
images.openxpu.registry, so one value points every image at a mirror; a digest pins it.
*/}}
{{- define "openxpu.image" -}}
{{- $img := (.Values.images | default dict).openxpu | default dict }}
{{- $registry := (.Values.global | default dict).imageRegistry | default $img.registry }}
{{- $repository := $img.repository | default "openxpu/openxpu" }}
{{- $ref := $repository }}
{{- if $registry }}{{ $ref = printf "%s/%s" (trimSuffix "/" $registry) $repository }}{{ end }}
{{- $tag := $img.tag | default .Chart.AppVersion | toString }}
{{- if $tag }}{{ $ref = printf "%s:%s" $ref $tag }}{{ end }}
{{- if $img.digest }}{{ $ref = printf "%s@%s" $ref $img.digest }}{{ end }}
{{- $ref }}
{{- end }}

{{- define "openxpu.pullPolicy" -}}
{{- ((.Values.images | default dict).openxpu | default dict).pullPolicy | default "IfNotPresent" }}
{{- end }}

{{/* `imagePullSecrets:` of a pod spec, or nothing. */}}
{{- define "openxpu.imagePullSecrets" -}}
{{- with (.Values.global | default dict).imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* A container that drops everything: non-root, read-only root, no privilege escalation. */}}
{{- define "openxpu.restrictedContainer" -}}
runAsNonRoot: true
runAsUser: 65534
runAsGroup: 65534
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The XPUClusterPolicy spec, 1:1 from the policy sections of the values (null or empty
sections are left out, so the CRD's defaults apply). Operands without an image of their
own get the chart's image, so global.imageRegistry and a digest reach them too.
*/}}
{{- define "openxpu.policySpec" -}}
{{- $spec := dict }}
{{- $operator := pick (.Values.operator | default dict) "defaultRuntime" "labels" "annotations" }}
{{- if $operator }}{{ $_ := set $spec "operator" $operator }}{{ end }}
{{- range $section := list "daemonsets" "driver" "cdi" "devicePlugin" "featureDiscovery" "exporter" "validator" "emulation" "nodeSelector" }}
{{- $value := get $.Values $section }}
{{- if $value }}{{ $_ := set $spec $section (deepCopy $value) }}{{ end }}
{{- end }}
{{- range $section := list "driver" "cdi" "devicePlugin" "featureDiscovery" "exporter" "validator" }}
{{- $value := get $spec $section | default dict }}
{{- if not $value.image }}{{ $_ := set $value "image" (include "openxpu.image" $) }}{{ end }}
{{- if not $value.imagePullPolicy }}{{ $_ := set $value "imagePullPolicy" (include "openxpu.pullPolicy" $) }}{{ end }}
{{- $_ := set $spec $section $value }}
{{- end }}
{{- toYaml $spec }}
{{- end }}
