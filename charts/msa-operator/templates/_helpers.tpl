{{/* Name of the chart. */}}
{{- define "msa-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name of the release's objects. */}}
{{- define "msa-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "msa-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "msa-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels selecting the operator's pods. */}}
{{- define "msa-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "msa-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "msa-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "msa-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespaces the operator watches, comma-separated (empty: every namespace):
watchNamespaces and the older watchNamespace (one name, or names separated by commas). */}}
{{- define "msa-operator.watchNamespaces" -}}
{{- $names := concat (splitList "," (.Values.watchNamespace | default "" | nospace)) (.Values.watchNamespaces | default list) }}
{{- range $name := $names | compact }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $name) }}
{{- fail (printf "watchNamespaces: %q is not a namespace name (lower-case letters, digits and '-', at most 63)" $name) }}
{{- end }}
{{- end }}
{{- $names | compact | uniq | sortAlpha | join "," }}
{{- end }}
