"""Who we are on Azure: the credential, the subscription, and error wording.

mfhelm never stores or asks for a secret. It uses whatever `az login` (or a
workload identity, or environment variables) already provides, through
azure-identity's DefaultAzureCredential.
"""

from __future__ import annotations

import json
import os
import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfhelm.errors import MfhelmError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

SUBSCRIPTION_ENV = "AZURE_SUBSCRIPTION_ID"
ARM_SCOPE = "https://management.azure.com/.default"
_GUID_RE = re.compile(r"\A[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")


def get_credential(
    credential: TokenCredential | None = None, *, authority: str | None = None
) -> TokenCredential:
    """The credential every Azure call uses.

    A caller (a test, or a tool embedding mfhelm) may pass its own credential;
    otherwise DefaultAzureCredential, which finds `az login`, environment
    variables or a workload identity. Interactive browser login stays off: a
    CLI that pops a browser in CI hangs instead of failing.
    """
    if credential is not None:
        return credential
    from azure.identity import DefaultAzureCredential

    kwargs: dict[str, Any] = {"exclude_interactive_browser_credential": True}
    if authority:
        kwargs["authority"] = authority
    return DefaultAzureCredential(**kwargs)


def azure_config_dir() -> Path:
    """Where the az CLI keeps its profile (AZURE_CONFIG_DIR overrides ~/.azure)."""
    return Path(os.environ.get("AZURE_CONFIG_DIR") or Path.home() / ".azure")


def default_subscription_id(config_dir: Path | None = None) -> str:
    """The az CLI's default subscription, read from azureProfile.json."""
    path = (config_dir or azure_config_dir()) / "azureProfile.json"
    try:
        # az writes this file with a byte-order mark.
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise MfhelmError(
            f"no Azure subscription chosen: run `az login` or set {SUBSCRIPTION_ENV}"
        ) from None
    except (OSError, ValueError) as exc:
        raise MfhelmError(f"{path}: unreadable ({exc}); run `az login` again") from None
    subs = data.get("subscriptions") if isinstance(data, dict) else None
    for sub in subs or []:
        if isinstance(sub, dict) and sub.get("isDefault") and sub.get("id"):
            return str(sub["id"])
    raise MfhelmError(
        "the az CLI has no default subscription: run `az account set -s <id>` "
        f"or set {SUBSCRIPTION_ENV}"
    )


def resolve_subscription_id(explicit: str | None = None) -> str:
    """The subscription to use: explicit, then AZURE_SUBSCRIPTION_ID, then az's default."""
    sub = explicit or os.environ.get(SUBSCRIPTION_ENV, "").strip() or default_subscription_id()
    if not _GUID_RE.fullmatch(sub):
        raise MfhelmError(f"subscription id {sub!r} is not a GUID; check {SUBSCRIPTION_ENV}")
    return sub


def text(value: Any) -> str:
    """An SDK field as plain text: its enums are str subclasses whose str() is the
    member name (ProvisioningState.SUCCEEDED), not the wire value."""
    if value is None:
        return ""
    return str(value.value) if isinstance(value, Enum) else str(value)


def error_code(exc: Exception) -> str:
    """The ARM/Key Vault error code of an HttpResponseError, or ''."""
    err = getattr(exc, "error", None)
    code = getattr(err, "code", None)
    return str(code) if code else ""


def error_message(exc: Exception) -> str:
    """One line from an SDK error: the service's message without the SDK's preamble."""
    err = getattr(exc, "error", None)
    msg = getattr(err, "message", None) or getattr(exc, "message", None) or str(exc)
    first = str(msg).strip().splitlines()[0] if str(msg).strip() else type(exc).__name__
    return first


def status_of(exc: Exception) -> int | None:
    return getattr(exc, "status_code", None)


def auth_error(exc: Exception) -> MfhelmError:
    """A failed token request or a 401: the user is not logged in (or not any more)."""
    return MfhelmError(
        f"Azure login failed ({error_message(exc)}); run `az login` and try again"
    )
