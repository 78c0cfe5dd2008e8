{{/* Names, labels and shared snippets. */}}

{{- define "metaflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name prefix: the release name unless overridden. */}}
{{- define "metaflow.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "metaflow.labels" -}}
app.kubernetes.io/part-of: metaflow
app.kubernetes.io/name: {{ include "metaflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component; pass (dict "ctx" $ "component" "x"). */}}
{{- define "metaflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "metaflow.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "metaflow.componentLabels" -}}
{{ include "metaflow.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "metaflow.isLocal" -}}
{{- if eq .Values.profile "local" }}true{{ end -}}
{{- end -}}

{{- define "metaflow.flowNamespace" -}}
{{- default .Release.Namespace .Values.flows.namespace -}}
{{- end -}}

{{- define "metaflow.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* Database coordinates, resolved per profile. */}}
{{- define "metaflow.dbHost" -}}
{{- if include "metaflow.isLocal" . -}}
{{- printf "%s-postgres" (include "metaflow.fullname" .) -}}
{{- else -}}
{{- required "database.host is required on the azure profile (Bicep output postgresFqdn)" .Values.database.host -}}
{{- end -}}
{{- end -}}

{{- define "metaflow.dbSslMode" -}}
{{- if .Values.database.sslMode -}}
{{- .Values.database.sslMode -}}
{{- else if include "metaflow.isLocal" . -}}
disable
{{- else -}}
require
{{- end -}}
{{- end -}}

{{- define "metaflow.dbSecretName" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else -}}
{{- printf "%s-db" (include "metaflow.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "metaflow.dbSecretKey" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecretPasswordKey -}}
{{- else -}}
password
{{- end -}}
{{- end -}}

{{/* The MF_METADATA_DB_* environment every database client shares. */}}
{{- define "metaflow.dbEnv" -}}
- name: MF_METADATA_DB_HOST
  value: {{ include "metaflow.dbHost" . | quote }}
- name: MF_METADATA_DB_PORT
  value: {{ .Values.database.port | quote }}
- name: MF_METADATA_DB_USER
  value: {{ .Values.database.user | quote }}
- name: MF_METADATA_DB_PSWD
  valueFrom:
    secretKeyRef:
      name: {{ include "metaflow.dbSecretName" . }}
      key: {{ include "metaflow.dbSecretKey" . }}
- name: MF_METADATA_DB_NAME
  value: {{ .Values.database.name | quote }}
- name: MF_METADATA_DB_SSL_MODE
  value: {{ include "metaflow.dbSslMode" . | quote }}
{{- if .Values.database.sslRootCertConfigMap }}
{{- /* run_goose.py reads the first name, the services the second. */}}
- name: MF_METADATA_DB_SSL_ROOT_CERT
  value: /etc/metaflow/db-ca/{{ .Values.database.sslRootCertKey }}
- name: MF_METADATA_DB_SSL_ROOT_CERT_PATH
  value: /etc/metaflow/db-ca/{{ .Values.database.sslRootCertKey }}
{{- end }}
- name: DB_SCHEMA_NAME
  value: {{ .Values.database.schema | quote }}
- name: MF_METADATA_DB_POOL_MIN
  value: {{ .Values.database.pool.min | quote }}
- name: MF_METADATA_DB_POOL_MAX
  value: {{ .Values.database.pool.max | quote }}
- name: MF_METADATA_DB_TIMEOUT
  value: {{ .Values.database.pool.timeout | quote }}
{{- end -}}

{{/* The CA bundle mount for verify-ca / verify-full. */}}
{{- define "metaflow.dbCaMount" -}}
{{- if .Values.database.sslRootCertConfigMap }}
- name: db-ca
  mountPath: /etc/metaflow/db-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "metaflow.dbCaVolume" -}}
{{- with .Values.database.sslRootCertConfigMap }}
- name: db-ca
  configMap:
    name: {{ . }}
{{- end }}
{{- end -}}

{{/* Blob endpoint and sysroot, per profile. */}}
{{- define "metaflow.blobEndpoint" -}}
{{- if include "metaflow.isLocal" . -}}
{{- printf "https://%s-azurite.%s.svc.cluster.local:10000/devstoreaccount1/" (include "metaflow.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "storage.blobEndpoint is required on the azure profile (Bicep output storageBlobEndpoint)" .Values.storage.blobEndpoint -}}
{{- end -}}
{{- end -}}

{{- define "metaflow.sysroot" -}}
{{- printf "%s/%s" .Values.storage.container .Values.storage.prefix | trimSuffix "/" -}}
{{- end -}}

{{- define "metaflow.metadataUrl" -}}
{{- printf "http://%s-metadata.%s.svc.cluster.local:%v" (include "metaflow.fullname" .) .Release.Namespace .Values.metadata.port -}}
{{- end -}}

{{/* Azure Blob access for pods that read artifacts. */}}
{{- define "metaflow.blobEnv" -}}
- name: METAFLOW_DEFAULT_DATASTORE
  value: azure
- name: METAFLOW_DATASTORE_SYSROOT_AZURE
  value: {{ include "metaflow.sysroot" . | quote }}
- name: METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT
  value: {{ include "metaflow.blobEndpoint" . | quote }}
{{- end -}}

{{- define "metaflow.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{- define "metaflow.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext -}}
{{- end -}}

{{/* Scheduling of long-lived services. */}}
{{- define "metaflow.serviceScheduling" -}}
{{- with .Values.serviceNodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.serviceTolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Guards that turn bad combinations into one clear install error. */}}
{{- define "metaflow.validate" -}}
{{- include "metaflow.validateAccess" . -}}
{{- if and (not (include "metaflow.isLocal" .)) .Values.database.password -}}
{{- fail "database.password is for the local profile only; on azure put the password in a Secret and set database.existingSecret" -}}
{{- end -}}
{{- if and (not (include "metaflow.isLocal" .)) (not .Values.database.existingSecret) -}}
{{- fail "database.existingSecret is required on the azure profile (mfhelm install creates it from Key Vault)" -}}
{{- end -}}
{{- if and (include "metaflow.isLocal" .) (not .Values.database.existingSecret) (not .Values.database.password) -}}
{{- fail "the local profile needs database.password or database.existingSecret" -}}
{{- end -}}
{{- if and (not (include "metaflow.isLocal" .)) (not .Values.identity.clientId) -}}
{{- fail "identity.clientId is required on the azure profile (Bicep output identityClientId)" -}}
{{- end -}}
{{- if and (has (include "metaflow.dbSslMode" .) (list "verify-ca" "verify-full")) (not .Values.database.sslRootCertConfigMap) -}}
{{- fail "database.sslMode verify-ca/verify-full needs database.sslRootCertConfigMap (the server's CA bundle)" -}}
{{- end -}}
{{- if and .Values.airflow.enabled (ne (.Values.airflow.dags.persistence.existingClaim | toString) .Values.airflowGlue.dags.claimName) -}}
{{- fail "airflow.dags.persistence.existingClaim must equal airflowGlue.dags.claimName" -}}
{{- end -}}
{{- if and .Values.airflow.enabled (ne (.Values.airflow.data.metadataSecretName | toString) .Values.airflowGlue.metadataSecretName) -}}
{{- fail "airflow.data.metadataSecretName must equal airflowGlue.metadataSecretName" -}}
{{- end -}}
{{- if and .Values.database.adminUser (eq .Values.database.adminUser .Values.database.user) -}}
{{- fail "database.user must not be database.adminUser: the applications get their own role" -}}
{{- end -}}
{{- if include "metaflow.argoElsewhere" . -}}
{{- $flag := printf "--managed-namespace=%s" (include "metaflow.flowNamespace" .) -}}
{{- $argo := index .Values "argo-workflows" -}}
{{- if not (and (has $flag (dig "controller" "extraArgs" list $argo)) (has $flag (dig "server" "extraArgs" list $argo))) -}}
{{- fail (printf "flows.namespace %s is not the release namespace: Argo must watch it; set argo-workflows.controller.extraArgs and argo-workflows.server.extraArgs to [%s] (mfhelm install does)" (include "metaflow.flowNamespace" .) $flag) -}}
{{- end -}}
{{- end -}}
{{- if .Values.airflow.enabled -}}
{{- if eq (include "metaflow.flowNamespace" .) .Release.Namespace -}}
{{- fail (printf "airflow.enabled needs flows.namespace set to a namespace other than the release namespace %s: Airflow runs DAG files as %s, which may launch pods in the flow namespace, and there they could mount the services' Secrets" .Release.Namespace .Values.serviceAccounts.airflow.name) -}}
{{- end -}}
{{- if dig "webserver" "defaultUser" "enabled" false .Values.airflow -}}
{{- fail "airflow.webserver.defaultUser.enabled must stay false: it creates admin/admin with the password in argv and values; the admin comes from airflowGlue.adminSecretName" -}}
{{- end -}}
{{- if not (and .Values.airflow.webserverSecretKeySecretName .Values.airflow.fernetKeySecretName) -}}
{{- fail "airflow.webserverSecretKeySecretName and airflow.fernetKeySecretName must name Secrets (mfhelm install creates them); unset, the keys change on every upgrade" -}}
{{- end -}}
{{- if dig "migrateDatabaseJob" "useHelmHooks" true .Values.airflow -}}
{{- fail "airflow.migrateDatabaseJob.useHelmHooks must be false: under helm --wait a post-install migration hook never runs" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* checkov findings accepted on purpose, each with its reason. */}}
{{- define "metaflow.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_15=Image tags are pinned in values.yaml; IfNotPresent avoids needless pulls and lets kind use preloaded images.
checkov.io/skip2: CKV_K8S_43=Images are pinned by tag in values.yaml; registries' digests differ per mirror.
{{- end -}}

{{- define "metaflow.checkovSkipsSecretEnv" -}}
checkov.io/skip3: CKV_K8S_35=The metadata service, its migrations and the postgres image read the DB password only from an environment variable.
{{- end -}}

{{/* The UI backend's working directory: an emptyDir (see ui.yaml). */}}
{{- define "metaflow.uiWorkDir" -}}
/var/lib/metaflow-ui
{{- end -}}

{{/* argo-helm's fullname (its _helpers.tpl at 0.45.20 and 1.0.18): fullnameOverride, else
     the release name when it already contains the chart name, else
     <release>-argo-workflows. Its service accounts derive from it. */}}
{{- define "metaflow.argoFullname" -}}
{{- $argo := index .Values "argo-workflows" -}}
{{- if $argo.fullnameOverride -}}
{{- $argo.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "argo-workflows" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-argo-workflows" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* argo-helm's controller ConfigMap (`argo-workflows.controller.config-map.name`
     at 0.45.20 and 1.0.18): controller.configMap.name, else <fullname>-workflow-controller-configmap. */}}
{{- define "metaflow.argoControllerConfigMap" -}}
{{- $argo := index .Values "argo-workflows" -}}
{{- $controller := printf "%s-%s" (include "metaflow.argoFullname" .) (dig "controller" "name" "workflow-controller" $argo) | trunc 63 | trimSuffix "-" -}}
{{- dig "controller" "configMap" "name" "" $argo | default (printf "%s-configmap" $controller) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* True when Argo runs and flow pods live outside the release namespace. */}}
{{- define "metaflow.argoElsewhere" -}}
{{- if and (index .Values "argo-workflows" "enabled") (ne (include "metaflow.flowNamespace" .) .Release.Namespace) }}true{{ end -}}
{{- end -}}

{{/* The sign-in proxy's name: its Deployment, Service, ServiceAccount,
     ConfigMap and Ingress (the Bicep's federated credential names the
     account system:serviceaccount:<namespace>:<release>-signin). */}}
{{- define "metaflow.signinName" -}}
{{- printf "%s-signin" (include "metaflow.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The groups allowed in, as JSON: access.adminGroups, dataScientists.groups
     and viewers.groups (the last two are mfhelm grant's). */}}
{{- define "metaflow.accessGroups" -}}
{{- $viewers := .Values.viewers | default dict -}}
{{- $ds := .Values.dataScientists | default dict -}}
{{- concat (.Values.access.adminGroups | default list) ($ds.groups | default list) ($viewers.groups | default list) | uniq | toJson -}}
{{- end -}}

{{/* Proxy flags the chart sets itself (or that alpha config replaces):
     refused in access.proxy.extraArgs. Flags that would let requests past
     the sign-in (--skip-auth-route, --trusted-ip, ...) are mfhelm's
     security promise (mfhelm/promises.py), refused there with an override. */}}
{{- define "metaflow.signinChartFlags" -}}
{{- list "--alpha-config" "--config" "--upstream" "--provider" "--oidc-issuer-url" "--client-id" "--client-secret" "--client-secret-file" "--allowed-group" "--scope" "--skip-jwt-bearer-tokens" "--bearer-token-login-fallback" "--cookie-secret" "--cookie-secret-file" "--cookie-secure" "--cookie-expire" "--cookie-refresh" "--cookie-name" "--redirect-url" "--whitelist-domain" "--http-address" "--https-address" "--reverse-proxy" "--pass-user-headers" "--pass-authorization-header" "--pass-access-token" "--pass-basic-auth" "--skip-auth-strip-headers" | toJson -}}
{{- end -}}

{{/* Guards for access: one clear line for each missing piece. */}}
{{- define "metaflow.validateAccess" -}}
{{- if hasKey .Values "ingress" -}}
{{- fail "ingress: was replaced by access: (HTTPS entry point with sign-in: access.enabled, access.host, access.tls); remove the ingress block" -}}
{{- end -}}
{{- $a := .Values.access -}}
{{- if $a.enabled -}}
{{- if not $a.host -}}
{{- fail "access.enabled needs access.host (the host name users open, e.g. metaflow.example.com)" -}}
{{- end -}}
{{- if and $a.tls.keyVaultCertificateUri $a.tls.secretName -}}
{{- fail "access.tls: set keyVaultCertificateUri or secretName, not both" -}}
{{- end -}}
{{- if not (or $a.tls.keyVaultCertificateUri $a.tls.secretName) -}}
{{- fail "access.enabled needs a certificate for access.host: access.tls.keyVaultCertificateUri (a Key Vault certificate id) or access.tls.secretName (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if not $a.issuerUrl -}}
{{- fail "access.enabled needs access.issuerUrl (for Entra ID https://login.microsoftonline.com/<tenant id>/v2.0)" -}}
{{- end -}}
{{- if not (hasPrefix "https://" $a.issuerUrl) -}}
{{- if not (and (eq $a.provider "oidc") (include "metaflow.isLocal" .) (hasPrefix "http://" $a.issuerUrl)) -}}
{{- fail (printf "access.issuerUrl %s must be an https:// URL (plain http only for the oidc provider on the local profile)" $a.issuerUrl) -}}
{{- end -}}
{{- end -}}
{{- if not $a.clientId -}}
{{- fail "access.enabled needs access.clientId (the app registration users sign in to; Bicep output signinClientId)" -}}
{{- end -}}
{{- if eq $a.provider "entra-id" -}}
{{- if $a.clientSecretName -}}
{{- fail "access.clientSecretName is for the oidc provider only: entra-id signs in with the proxy's workload identity, no client secret" -}}
{{- end -}}
{{- if not (hasSuffix "/v2.0" $a.issuerUrl) -}}
{{- fail (printf "access.issuerUrl %s is not an Entra ID v2.0 issuer: use https://login.microsoftonline.com/<tenant id>/v2.0 (or your cloud's login host), or access.provider oidc" $a.issuerUrl) -}}
{{- end -}}
{{- with regexFind "^https://[^/]+/(common|organizations|consumers)/" $a.issuerUrl -}}
{{- fail (printf "access.issuerUrl must name one tenant, not %s: bearer tokens are only checked against the issuer" (regexReplaceAll "^https://[^/]+/([a-z]+)/$" . "${1}")) -}}
{{- end -}}
{{- else if ne $a.provider "oidc" -}}
{{- fail (printf "access.provider %s: use entra-id or oidc" $a.provider) -}}
{{- else if not $a.clientSecretName -}}
{{- fail "access.provider oidc needs access.clientSecretName (a Secret with the client secret): oauth2-proxy refuses an oidc client without one" -}}
{{- end -}}
{{- if not (include "metaflow.accessGroups" . | fromJsonArray) -}}
{{- fail "access.enabled needs at least one allowed group (access.adminGroups, dataScientists.groups or viewers.groups): with none, every user of the issuer would get in" -}}
{{- end -}}
{{- $chartFlags := include "metaflow.signinChartFlags" . | fromJsonArray -}}
{{- range $a.proxy.extraArgs -}}
{{- $flag := regexReplaceAll "=.*$" (toString .) "" -}}
{{- if has $flag $chartFlags -}}
{{- fail (printf "access.proxy.extraArgs: %s is refused: the chart sets it (or its alpha config replaces it)" $flag) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The application id of AKS's Entra server app, the same in every tenant:
     AKS's API server takes Entra tokens issued for it (aud), and the
     sign-in asks for its `user.read` scope so the user's access token is
     one (the Argo server acts with it). */}}
{{- define "metaflow.aksServerApp" -}}
6dae42f8-4368-4678-94ff-3960e28e3630
{{- end -}}
