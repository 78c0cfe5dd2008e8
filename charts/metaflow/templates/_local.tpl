{{/* Local profile: trust in the local CA and tokens from the entra-emulator
     (see local-azurite.yaml, local-entra-emulator.yaml). Every helper here is
     empty on the azure profile. */}}

{{- define "metaflow.localCaPath" -}}/etc/mfhelm/local-ca/ca.crt{{- end -}}

{{- define "metaflow.emulatorUrl" -}}
{{- printf "https://%s-entra-emulator.%s.svc.cluster.local:%v" (include "metaflow.fullname" .) .Release.Namespace .Values.local.entraEmulator.port -}}
{{- end -}}

{{/* Python's requests (the Azure SDK's transport) trusts the local CA. */}}
{{- define "metaflow.localCaEnv" -}}
{{- if include "metaflow.isLocal" . }}
- name: REQUESTS_CA_BUNDLE
  value: {{ include "metaflow.localCaPath" . }}
{{- end }}
{{- end -}}

{{/* The CA certificate only (the serving Secret carries it; the CA's key
     stays in <release>-local-ca, mounted nowhere). */}}
{{- define "metaflow.localCaMount" -}}
{{- if include "metaflow.isLocal" . }}
- name: local-ca
  mountPath: /etc/mfhelm/local-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "metaflow.localCaVolume" -}}
{{- if include "metaflow.isLocal" . }}
- name: local-ca
  secret:
    secretName: {{ include "metaflow.fullname" . }}-local-tls
    items:
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- end -}}

{{/* A pod that reads Blob with Metaflow's unpatched DefaultAzureCredential
     (the UI backend): azure-identity's workload-identity variables, as AKS's
     webhook sets them, pointing at the emulator; the "federated token" is
     the emulator's client assertion, mounted as a file. */}}
{{- define "metaflow.localEntraEnv" -}}
{{- if include "metaflow.isLocal" . }}
{{- $secret := printf "%s-entra-emulator" (include "metaflow.fullname" .) }}
- name: AZURE_AUTHORITY_HOST
  value: {{ include "metaflow.emulatorUrl" . | quote }}
- name: AZURE_TENANT_ID
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: tenant-id}
- name: AZURE_CLIENT_ID
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: client-id}
- name: AZURE_FEDERATED_TOKEN_FILE
  value: /var/run/mfhelm/entra/client-assertion
{{- include "metaflow.localCaEnv" . }}
{{- end }}
{{- end -}}

{{- define "metaflow.localEntraMount" -}}
{{- if include "metaflow.isLocal" . }}
- name: entra-assertion
  mountPath: /var/run/mfhelm/entra
  readOnly: true
{{- include "metaflow.localCaMount" . }}
{{- end }}
{{- end -}}

{{- define "metaflow.localEntraVolume" -}}
{{- if include "metaflow.isLocal" . }}
- name: entra-assertion
  secret:
    secretName: {{ include "metaflow.fullname" . }}-entra-emulator
    items:
      - {key: client-assertion, path: client-assertion}
{{- include "metaflow.localCaVolume" . }}
{{- end }}
{{- end -}}
