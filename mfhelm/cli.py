"""The `mfhelm` command line. Parses, calls one function, prints.

Keep this module cheap to import: `mfhelm --help` must answer fast, so the
Azure and Kubernetes SDKs are imported inside the functions that need them.
"""

from __future__ import annotations

import sys

import typer

from mfhelm import __version__
from mfhelm.errors import MfhelmError

app = typer.Typer(
    name="mfhelm",
    help="Stand up and operate a production Metaflow stack on Azure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mfhelm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True,
        help="Print the mfhelm version and exit.",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """Stand up and operate a production Metaflow stack on Azure."""
    _state["debug"] = debug


def main() -> None:
    """Console entry point: user errors become one line on stderr, exit 1.

    Typer's standalone mode already turns usage errors into a short message
    and exit 2; what remains is our own MfhelmError.
    """
    try:
        app()
    except MfhelmError as exc:
        if _state["debug"]:
            raise
        print(f"mfhelm: error: {exc}", file=sys.stderr)
        sys.exit(1)
