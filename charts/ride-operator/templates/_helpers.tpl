{{- define "ride-operator.name" -}}{{ .Release.Name }}{{- end -}}
{{- define "ride-operator.labels" -}}
app.kubernetes.io/name: ride-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "ride-operator.selector" -}}
app.kubernetes.io/name: ride-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
