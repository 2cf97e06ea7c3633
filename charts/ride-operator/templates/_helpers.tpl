{{- define "ride-operator.name" -}}{{ .Release.Name }}{{- end -}}
{{- /* Cluster-scoped objects carry the namespace too: two releases of the
same name in different namespaces must not share (or overwrite) them. */ -}}
{{- define "ride-operator.clusterName" -}}{{ .Release.Namespace }}-{{ .Release.Name }}{{- end -}}
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
