"""What a user can cause (MfhelmError) or do (Interrupted); the CLI turns
either into one line. And the one place text is cleaned of secrets before
mfhelm prints it (redact)."""

from __future__ import annotations

import re
from urllib.parse import quote


class MfhelmError(Exception):
    """A problem the user can fix. The message says what to do next."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM, raised by the CLI's signal handlers. A BaseException
    of our own, so that click does not swallow it as it does KeyboardInterrupt
    ("Aborted!"), and cleanup code (finally, context managers) runs."""


# ------------------------------------------------------------------ secrets
#
# Tools mfhelm runs (az, helm) and services it calls may quote a secret back
# in an error: az has echoed a deployment's secure parameters in its failure
# text. Every secret mfhelm handles (the PostgreSQL admin password it
# generates or reads from Key Vault, the role passwords, the password of a
# URL's userinfo) is remembered here, and every line mfhelm prints on stderr
# (the error line, progress, az's failure text) goes through redact().

REDACTED = "***"
# Shorter strings would blank out ordinary words; every secret mfhelm makes
# or reads is far longer (Flexible Server wants 8 at least).
MIN_SECRET_LEN = 6
_secrets: set[str] = set()
# scheme://user:password@host: the password, whoever wrote it.
_USERINFO_RE = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):(?P<pw>[^/\s@]*)@",
                          re.ASCII)


def remember_secret(value: str | None) -> None:
    """Never print `value` (nor its URL-encoded form) from now on."""
    if not value or len(value) < MIN_SECRET_LEN:
        return
    _secrets.add(value)
    _secrets.add(quote(value, safe=""))


def forget_secrets() -> None:
    """For tests: start from no known secrets."""
    _secrets.clear()


def redact(text: str) -> str:
    """`text` with every remembered secret and every URL password replaced by ***."""
    text = _USERINFO_RE.sub(lambda m: f"{m['head']}:{REDACTED}@" if m["pw"] else m[0], text)
    # Longest first: a secret that contains another is replaced whole.
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text
