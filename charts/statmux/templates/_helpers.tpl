{{/* Names and labels shared by the templates. */}}

{{- define "statmux.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "statmux.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "statmux.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "statmux.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: statmux
{{- end -}}

{{- define "statmux.selectorLabels" -}}
app.kubernetes.io/name: {{ include "statmux.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "statmux.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "statmux.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "repository:tag" of image .Values.image.<which>; the tag defaults to appVersion. */}}
{{- define "statmux.image" -}}
{{- $img := index .root.Values.image .which -}}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag) -}}
{{- end -}}

{{/* The operator's RBAC rules, one list shared by every Role/ClusterRole (files/rbac.yaml
     is generated from operator/rbac.py; tests/charts checks they are equal). */}}
{{- define "statmux.rbac" -}}
{{- .Files.Get "files/rbac.yaml" | fromYaml | toJson -}}
{{- end -}}
