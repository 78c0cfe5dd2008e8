"""Create the Blob containers mfhelm expects in Azurite (local profile).

Azurite starts empty and Metaflow does not create its container, so a hook
Job runs this once per install/upgrade. Standard library only: it runs in
the metadata-service image, which has Python but no Azure SDK. Requests are
signed with the SharedKey scheme using Azurite's published development key.
Azurite serves HTTPS under mfhelm's local CA, which REQUESTS_CA_BUNDLE names
(the variable the Azure SDK's transport reads; urllib is told here).
"""

import base64
import hashlib
import hmac
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from email.utils import formatdate

API_VERSION = "2021-08-06"


def _conn_parts(conn: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in conn.strip().split(";") if p)


def _sign(account: str, key: str, verb: str, path: str, query: dict[str, str],
          headers: dict[str, str]) -> str:
    canon_headers = "".join(
        f"{k}:{v}\n" for k, v in sorted(headers.items()) if k.startswith("x-ms-")
    )
    # Path-style endpoints (Azurite) repeat the account name in the resource.
    canon_resource = f"/{account}{path}" + "".join(
        f"\n{k}:{v}" for k, v in sorted(query.items())
    )
    to_sign = "\n".join([verb] + [""] * 11) + "\n" + canon_headers + canon_resource
    digest = hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()
    return f"SharedKey {account}:{base64.b64encode(digest).decode()}"


def _tls() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=os.environ.get("REQUESTS_CA_BUNDLE") or None)


def create_container(endpoint: str, account: str, key: str, name: str) -> bool:
    """PUT the container; True if created, False if it already existed."""
    base = endpoint.rstrip("/")
    path = urllib.request.urlparse(base).path + f"/{name}"
    query = {"restype": "container"}
    headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": API_VERSION}
    headers["Authorization"] = _sign(account, key, "PUT", path, query, headers)
    # No body: urllib would add a form Content-Type, which the signature lacks.
    req = urllib.request.Request(f"{base}/{name}?restype=container", method="PUT",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=_tls()):
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 409:  # ContainerAlreadyExists
            return False
        raise


def main(argv: list[str]) -> int:
    conn = _conn_parts(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    account, key = conn["AccountName"], conn["AccountKey"]
    endpoint = conn["BlobEndpoint"]
    deadline = time.monotonic() + float(os.environ.get("WAIT_SECONDS", "120"))
    for name in argv:
        while True:
            try:
                created = create_container(endpoint, account, key, name)
                print(f"container {name}: {'created' if created else 'exists'}")
                break
            except urllib.error.HTTPError as exc:
                print(f"creating container {name} failed: HTTP {exc.code} {exc.reason}",
                      file=sys.stderr)
                return 1
            except (urllib.error.URLError, ConnectionError) as exc:
                if time.monotonic() > deadline:
                    print(f"azurite not reachable at {endpoint}: {exc}", file=sys.stderr)
                    return 1
                time.sleep(2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
