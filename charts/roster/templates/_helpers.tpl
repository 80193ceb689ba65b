{{/* Names and labels shared by the templates. */}}
{{- define "roster.fullname" -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "roster.clusterName" -}}
{{- default (include "roster.fullname" .) .Values.cluster.name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "roster.labels" -}}
app.kubernetes.io/name: roster
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "roster.operatorSelector" -}}
app.kubernetes.io/name: roster
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
