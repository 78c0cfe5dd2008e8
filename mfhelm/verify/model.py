"""What `mfhelm verify`'s checks share: the stack they check, the run they
belong to, and how a check fails.

A check is a function `(stack, run) -> str`: it returns a short detail for
the table (a run id, a count) or raises `Failed(saw, fix)` (or `Skipped(why)`
when its layer cannot be reached from here). It registers an
undo for everything it creates with `run.on_cleanup` before creating it, so
a failure or Ctrl-C part way leaves nothing behind (unless `--keep`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfhelm.errors import MfhelmError

if TYPE_CHECKING:
    from mfhelm.stack import Target


class Failed(MfhelmError):
    """A check's failure: what it saw (a pod's event, an HTTP status, an Argo
    node's message) and the likely fix, each one line."""

    def __init__(self, saw: str, fix: str) -> None:
        super().__init__(f"{saw}; {fix}" if fix else saw)
        self.saw = saw
        self.fix = fix


class Skipped(MfhelmError):
    """Raised by a check that finds its layer out of reach from here (the UI
    backend not forwarded): the table says `skipped (<why>)`, verify goes on."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class Stack:
    """The installed stack, resolved once before the first check."""

    target: Target
    profile: str                 # "azure" | "local"
    flow_namespace: str
    chart_app_version: str       # the release's appVersion: the metadata service's version
    argo: bool
    argo_events: bool
    airflow: bool
    config: dict[str, str]       # the Metaflow config the checks run with
    config_file: Path            # where it is (config.json or config_<profile>.json)


@dataclass
class Run:
    """One `mfhelm verify`: its deadline, scratch directory and undo list."""

    workdir: Path                # the shipped flows are copied here; runs start here
    deadline: float              # time.monotonic() by which everything ends
    keep: bool = False
    cleanups: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    api: Any = None              # kubernetes ApiClient for the stack's cluster
    # What one check found for a later one, e.g. notes["local run"] = the run id.
    notes: dict[str, str] = field(default_factory=dict)

    def on_cleanup(self, what: str, undo: Callable[[], None]) -> None:
        """Register an undo; they run last-first when verify ends (not with --keep)."""
        self.cleanups.append((what, undo))


@dataclass(frozen=True)
class Check:
    name: str                                # the table's first column, e.g. "argo run"
    enabled: Callable[[Stack], bool]
    run: Callable[[Stack, Run], str]
