"""The local profile's Azure credential: tokens from the chart's
entra-emulator, asked by azure-identity's ClientAssertionCredential (the
request Entra ID's token endpoint takes for workload identity:
POST <authority>/<tenant>/oauth2/v2.0/token, client_credentials with a
client assertion).

Settings (config file or environment): METAFLOW_MFHELM_LOCAL_AUTHORITY,
METAFLOW_MFHELM_LOCAL_TENANT_ID, METAFLOW_MFHELM_LOCAL_CLIENT_ID,
METAFLOW_MFHELM_LOCAL_CLIENT_ASSERTION. TLS trust comes from
REQUESTS_CA_BUNDLE, which the config extension (local_profile.py) points at
the local CA.
"""


class MfhelmLocalClientProvider:
    name = "mfhelm-local"

    @staticmethod
    def create_cacheable_azure_credential(*args, **kwargs):
        from metaflow.exception import MetaflowException
        from metaflow.metaflow_config_funcs import from_conf

        settings = {key: from_conf("MFHELM_LOCAL_" + key) for key in
                    ("AUTHORITY", "TENANT_ID", "CLIENT_ID", "CLIENT_ASSERTION")}
        missing = ["METAFLOW_MFHELM_LOCAL_" + k for k, v in settings.items() if not v]
        if missing:
            raise MetaflowException(
                "the mfhelm-local Azure client provider needs {}: re-run `mfhelm config "
                "--local`".format(", ".join(missing)))
        return cacheable_credential(settings["AUTHORITY"], settings["TENANT_ID"],
                                    settings["CLIENT_ID"], settings["CLIENT_ASSERTION"])


_CLASS = None


def cacheable_credential(authority, tenant_id, client_id, assertion):
    """A ClientAssertionCredential that hashes and compares by its settings
    (Metaflow keys its client cache on the credential, and asks for a new
    one each time it wants a client)."""
    global _CLASS
    if _CLASS is None:
        from azure.identity import ClientAssertionCredential

        class CacheableLocalCredential(ClientAssertionCredential):
            def __init__(self, authority, tenant_id, client_id, assertion):
                super().__init__(tenant_id, client_id, lambda: assertion, authority=authority)
                self._mfhelm_key = (authority, tenant_id, client_id, assertion)

            def __hash__(self):
                return hash(self._mfhelm_key)

            def __eq__(self, other):
                return (isinstance(other, CacheableLocalCredential)
                        and self._mfhelm_key == other._mfhelm_key)

        _CLASS = CacheableLocalCredential
    return _CLASS(authority, tenant_id, client_id, assertion)
