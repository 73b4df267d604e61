{{/* Names, labels and the values every template shares. */}}

{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "berth.fullname" -}}
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

{{/* What every object carries besides the selector labels. */}}
{{- define "berth.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: berth
{{- end }}

{{- define "berth.labels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "berth.commonLabels" . }}
{{- end }}

{{/* The service's pods (the operator's and the Job's carry another component). */}}
{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: api
{{- end }}

{{- define "berth.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "berth.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "berth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "berth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret with the four secret settings: the user's, or the chart's. */}}
{{- define "berth.secretName" -}}
{{- default (include "berth.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* The chart's own Secret data; `required` makes a missing one fail `helm install`. */}}
{{- define "berth.secretData" -}}
database-url: {{ required "database.url is required (postgresql+asyncpg://user:pass@host:5432/berth), or set existingSecret" .Values.database.url | b64enc | quote }}
redis-url: {{ required "redis.url is required (redis://host:6379/0), or set existingSecret" .Values.redis.url | b64enc | quote }}
jwt-secret: {{ required "auth.jwtSecret is required (openssl rand -base64 48), or set existingSecret" .Values.auth.jwtSecret | b64enc | quote }}
cursor-secret: {{ required "pagination.cursorSecret is required (openssl rand -base64 48), or set existingSecret" .Values.pagination.cursorSecret | b64enc | quote }}
{{- end }}

{{/* Settings that are not secret, as environment variables (the ConfigMap's data). */}}
{{- define "berth.configData" -}}
BERTH_ENVIRONMENT: {{ .Values.environment | quote }}
BERTH_HTTP__HOST: "0.0.0.0"
BERTH_HTTP__PORT: {{ include "berth.containerPort" . | quote }}
BERTH_HTTP__GRACEFUL_SHUTDOWN_SECONDS: {{ .Values.shutdown.drainSeconds | quote }}
BERTH_OBSERVABILITY__METRICS_PORT: {{ .Values.metrics.port | quote }}
BERTH_TENANTS__REGISTRY_DIR: {{ include "berth.registryDir" . | quote }}
BERTH_OBSERVABILITY__LOG_FORMAT: "json"
{{- range $name, $value := .Values.config }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* The secret settings by environment name, from the Secret named by the argument. */}}
{{- define "berth.secretEnvFrom" -}}
{{- range $env, $key := dict "BERTH_DATABASE__URL" "database-url" "BERTH_REDIS__URL" "redis-url" "BERTH_AUTH__JWT_SECRET" "jwt-secret" "BERTH_PAGINATION__CURSOR_SECRET" "cursor-secret" }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $ }}
      key: {{ $key }}
{{- end }}
{{- end }}

{{- define "berth.secretEnv" -}}
{{- include "berth.secretEnvFrom" (include "berth.secretName" .) }}
{{- end }}

{{- define "berth.containerPort" -}}8000{{- end }}
{{- define "berth.registryDir" -}}/var/run/berth/tenants{{- end }}

{{/* The tenant registry, as docs/tenants.md says: a directory, optional, read-only. */}}
{{- define "berth.registryVolume" -}}
- name: tenant-registry
  secret:
    secretName: {{ .Values.tenantRegistry.secretName }}
    optional: true
    defaultMode: 0400
{{- end }}

{{- define "berth.registryMount" -}}
- name: tenant-registry
  mountPath: {{ include "berth.registryDir" . }}
  readOnly: true
{{- end }}

{{/* Hardened container: no privilege, nothing written outside /tmp. */}}
{{- define "berth.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "berth.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The checksum of what the pods read at start: a change rolls them. */}}
{{- define "berth.configChecksum" -}}
{{- $secret := "" }}
{{- if not .Values.existingSecret }}{{ $secret = include "berth.secretData" . }}{{ end }}
{{- printf "%s%s" (include "berth.configData" .) $secret | sha256sum }}
{{- end }}

{{/* Operator: the namespaces it watches; "" = every namespace. */}}
{{- define "berth.operatorNamespaces" -}}
{{- $namespaces := .Values.operator.namespaces | default (list .Release.Namespace) }}
{{- if has "*" $namespaces }}{{ else }}{{ join "," $namespaces }}{{ end }}
{{- end }}


{{- define "berth.dnsEgress" -}}
- to:
    - namespaceSelector: {}
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{/* Egress to a backend: {cidrs | namespaceSelector, podSelector; port}. */}}
{{- define "berth.backendEgress" -}}
- to:
    {{- range .cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- else }}
    - namespaceSelector:
        {{- with .namespaceSelector }}
        matchLabels:
          {{- toYaml . | nindent 10 }}
        {{- else }} {}
        {{- end }}
      {{- with .podSelector }}
      podSelector:
        matchLabels:
          {{- toYaml . | nindent 10 }}
      {{- end }}
    {{- end }}
  ports:
    - port: {{ .port }}
      protocol: TCP
{{- end }}
