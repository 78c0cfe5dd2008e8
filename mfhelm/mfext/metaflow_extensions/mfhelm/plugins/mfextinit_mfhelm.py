"""mfhelm's Metaflow plugins: the local profile's Azure client provider.

`METAFLOW_DEFAULT_AZURE_CLIENT_PROVIDER=mfhelm-local` (written by `mfhelm
config --local`, given to flow pods by the Secret <release>-local-flows)
makes Metaflow's create_cacheable_azure_credential (plugins/azure/
azure_credential.py) ask this provider instead of azure-default.
"""

AZURE_CLIENT_PROVIDERS_DESC = [
    ("mfhelm-local", ".local_azure.MfhelmLocalClientProvider"),
]
