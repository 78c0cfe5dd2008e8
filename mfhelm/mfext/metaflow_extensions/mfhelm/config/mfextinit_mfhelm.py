"""mfhelm's Metaflow extension: Entra access tokens for the metadata service
behind the sign-in proxy (README: "From a laptop or notebook"), and the local
profile's Blob access (local_profile.py).

Metaflow loads this module at the end of `metaflow.metaflow_config` and copies
every public, non-module name into it, so the only public names here are
SERVICE_HEADERS and AZURE_STORAGE_BLOB_SERVICE_ENDPOINT. With
`METAFLOW_MFHELM_SERVICE_SCOPE` unset (flow pods, and any config `mfhelm
config` wrote without an entry point) SERVICE_HEADERS is exactly the value
Metaflow computes itself; without the METAFLOW_MFHELM_LOCAL_* keys (every
azure-profile config) so is the Blob endpoint, and nothing else changes.
"""

from metaflow.metaflow_config_funcs import from_conf as __from_conf

from . import local_profile as __local_profile
from . import service_auth as __service_auth

# What metaflow_config computed before this module ran (its own from_conf and x-api-key).
__base = __from_conf("SERVICE_HEADERS", {})
if __from_conf("SERVICE_AUTH_KEY") is not None:
    __base["x-api-key"] = __from_conf("SERVICE_AUTH_KEY")

SERVICE_HEADERS = __service_auth.service_headers(
    __base,
    scope=__from_conf("MFHELM_SERVICE_SCOPE"),
    credential=__from_conf("MFHELM_SERVICE_CREDENTIAL"),
    service_url=__from_conf("SERVICE_URL"),
)

__local_profile.trust_local_ca(__from_conf("MFHELM_LOCAL_CA"))
AZURE_STORAGE_BLOB_SERVICE_ENDPOINT = __local_profile.blob_endpoint(
    __from_conf("AZURE_STORAGE_BLOB_SERVICE_ENDPOINT"), __from_conf("MFHELM_LOCAL_BLOB_ENDPOINT"))
