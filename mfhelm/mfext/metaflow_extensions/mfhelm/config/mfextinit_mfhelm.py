"""mfhelm's Metaflow extension: Entra access tokens for the metadata service
behind the sign-in proxy (README: "From a laptop or notebook").

Metaflow loads this module at the end of `metaflow.metaflow_config` and copies
every public, non-module name into it, so the only public name here is
SERVICE_HEADERS. With `METAFLOW_MFHELM_SERVICE_SCOPE` unset (flow pods, and any
config `mfhelm config` wrote without an entry point) it is exactly the value
Metaflow computes itself and nothing else changes.
"""

from metaflow.metaflow_config_funcs import from_conf as __from_conf

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
