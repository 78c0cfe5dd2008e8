"""What `mfhelm verify` runs against in tests/cluster/test_e2e_verify_core.py,
tests/unit/test_verify_checks.py and `make bench`:

- `start_metadata_service`: the metadata service's REST API on 127.0.0.1,
  served by `metaflow-local-service` (PyPI, pinned in pyproject's test
  extra; as tests/access does). It stands in for Netflix's metaflow-service,
  whose image cannot run here (KWOK nodes run no containers) and which is on
  no registry. It answers `/ping` with the METADATA_SERVICE_VERSION header
  (it has no `/version`, which verify then reads the header for), records
  runs, and serves the UI backend's `/api/flows/<flow>/runs/<id>` on the same
  port. Its advertised version is set to what the test asks (the chart's
  appVersion, or another to break the check); that is the one change.
- `serve_refusing_entra`: the Entra-shaped token endpoint of metaflow_env,
  but its storage tokens are for another audience, so the real Azurite (HTTPS,
  `--oauth basic`) refuses them: 403 AuthenticationFailed, as Blob refuses a
  token that is not for it.
- `hanging_server`: accepts connections and never answers (for --timeout and
  Ctrl-C while a check waits).
- `user_home`: the data scientist's HOME with `~/.metaflowconfig/config.json`
  as `mfhelm config` writes it (metaflow_env.build_metaflow_env), the Blob
  endpoint written into the file (as `mfhelm config --local` does for the
  local Azurite) and the UI URL set so the UI backend is found beside it.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import metaflow_env as mfenv
from .controlplane import ROOT
from .pki import CertificateAuthority


def chart_app_version() -> str:
    chart = yaml.safe_load((ROOT / "charts" / "metaflow" / "Chart.yaml").read_text())
    return str(chart["appVersion"])


Service = mfenv.MetadataService


def start_metadata_service(workdir: Path, version: str) -> Service:
    """metaflow-local-service on a free loopback port, advertising `version`."""
    return mfenv.start_metadata_service(workdir, version)


@contextlib.contextmanager
def serve_refusing_entra(ca: CertificateAuthority, entra: mfenv.FakeEntra
                         ) -> Iterator[mfenv.FakeEntra]:
    """Answers the workload-identity exchange of `entra` (same tenant, app and
    federated token) with storage tokens for another audience."""
    class H(mfenv._Recorder):
        requests = entra.requests

        def do_POST(self) -> None:
            req = self._record()
            if req.path != f"/{entra.tenant}/oauth2/v2.0/token" or \
                    req.form.get("client_assertion") != entra.federated_token:
                self._reply(400, mfenv._entra_error("invalid_client", "AADSTS700016"))
                return
            token = mfenv.storage_token(entra.tenant, entra.client_id,
                                        audience="https://other.example")
            entra.issued.append(token)
            self._reply(200, {"token_type": "Bearer", "expires_in": 3599,
                              "ext_expires_in": 3599, "access_token": token})

    with mfenv._serve(H, mfenv._server_context(ca, "entra-refusing")) as url:
        entra.url = url
        yield entra


@contextlib.contextmanager
def hanging_server() -> Iterator[str]:
    """http://127.0.0.1:<port>: connections complete, nothing is ever answered."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def closed_port_url() -> str:
    return f"http://127.0.0.1:{mfenv.free_port()}"


@dataclass
class UserHome:
    env: dict[str, str]           # the user's environment (HOME, Azure credential variables)
    config_file: Path
    config: dict[str, str]

    def write(self, **changes: str) -> None:
        self.config = self.config | changes
        self.config_file.write_text(json.dumps(self.config, indent=4))


def user_home(workdir: Path, *, azurite: mfenv.Azurite, entra: mfenv.FakeEntra,
              service_url: str, outputs: dict[str, Any]) -> UserHome:
    from mfhelm.settings import parse

    settings = parse({"org_prefix": "acme", "location": "westeurope"})
    mf = mfenv.build_metaflow_env(workdir, azurite=azurite, entra=entra,
                                  metadata=mfenv.FakeMetadata(url=service_url),
                                  outputs=outputs, settings=settings)
    env = dict(mf.env)
    endpoint = env.pop("METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT")
    home = UserHome(env, mf.config_file, dict(mf.config))
    home.write(METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT=endpoint,
               METAFLOW_UI_URL=service_url + "/")
    return home
