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

{{/* Whether the service cannot start without a MongoDB URL: a production start with
     submissions on refuses to run without one (service/core/config.py, production_problems). */}}
{{- define "berth.mongoRequired" -}}
{{- if and .Values.submissions.enabled (eq .Values.environment "production") }}true{{ end }}
{{- end }}

{{/* The chart's own Secret data; `required` makes a missing one fail `helm install`. */}}
{{- define "berth.secretData" -}}
database-url: {{ required "database.url is required (postgresql+asyncpg://user:pass@host:5432/berth), or set existingSecret" .Values.database.url | b64enc | quote }}
redis-url: {{ required "redis.url is required (redis://host:6379/0), or set existingSecret" .Values.redis.url | b64enc | quote }}
jwt-secret: {{ required "auth.jwtSecret is required (openssl rand -base64 48), or set existingSecret" .Values.auth.jwtSecret | b64enc | quote }}
cursor-secret: {{ required "pagination.cursorSecret is required (openssl rand -base64 48), or set existingSecret" .Values.pagination.cursorSecret | b64enc | quote }}
{{- if include "berth.mongoRequired" . }}
mongo-url: {{ required "mongo.url is required while submissions.enabled in production (mongodb://user:pass@host:27017/?authSource=admin), or set existingSecret (key mongo-url), or submissions.enabled=false" .Values.mongo.url | b64enc | quote }}
{{- else if .Values.mongo.url }}
mongo-url: {{ .Values.mongo.url | b64enc | quote }}
{{- end }}
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
BERTH_SUBMISSIONS__ENABLED: {{ .Values.submissions.enabled | quote }}
BERTH_SUBMISSIONS__WORKER_ENABLED: {{ .Values.submissions.workerEnabled | quote }}
BERTH_SUBMISSIONS__WORKER_CONCURRENCY: {{ .Values.submissions.workerConcurrency | quote }}
{{- range $name, $value := .Values.config }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* The secret settings by environment name, from the Secret `secret` (the release's, or
     its hook copy): {root: ., secret: name}. */}}
{{- define "berth.secretEnvFrom" -}}
{{- $secret := .secret }}
{{- range $env, $key := dict "BERTH_DATABASE__URL" "database-url" "BERTH_REDIS__URL" "redis-url" "BERTH_AUTH__JWT_SECRET" "jwt-secret" "BERTH_PAGINATION__CURSOR_SECRET" "cursor-secret" }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- end }}
{{- $values := .root.Values }}
{{- if or $values.existingSecret $values.mongo.url }}
{{- /* The user's Secret may lack the key where the service starts without it (`optional`);
       where it cannot, a missing key stops the pod naming the key, before the service runs. */}}
- name: BERTH_MONGO__URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: mongo-url
      {{- if and $values.existingSecret (not (include "berth.mongoRequired" .root)) }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}

{{- define "berth.secretEnv" -}}
{{- include "berth.secretEnvFrom" (dict "root" . "secret" (include "berth.secretName" .)) }}
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

{{/* Operator: the Secret holding the default MongoDB server's admin URL (the user's, or the
     chart's own from operator.defaultMongoServer.url); "" = none. */}}
{{- define "berth.operatorMongoSecretName" -}}
{{- $server := .Values.operator.defaultMongoServer }}
{{- if and $server.url $server.secretName }}
{{- fail "operator.defaultMongoServer: set url or secretName, not both" }}
{{- end }}
{{- if $server.secretName }}{{ $server.secretName }}
{{- else if $server.url }}{{ include "berth.fullname" . }}-operator-mongo
{{- end }}
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
