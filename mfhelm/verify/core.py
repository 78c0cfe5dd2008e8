"""`mfhelm verify`: resolve the installed stack, run its checks layer by layer,
stop at the first failure, undo what the checks made, print the table.

The checks (mfhelm.verify.checks_core, mfhelm.verify.checks_orchestrators)
run in this order: the metadata service, a local run, the orchestrators,
the UI. Each runs in a worker thread so that `--timeout` and Ctrl-C can end
it: the main thread waits, and on either stops every child process the check
started (mfhelm.proc registers them), then runs the cleanups, last-first.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfhelm import proc
from mfhelm.errors import Interrupted, MfhelmError
from mfhelm.verify.model import Check, Failed, Run, Skipped, Stack

# The table's order; the orchestrators' checks come between "local run" and "ui".
CORE_BEFORE = ("metadata service", "local run", "flow image")
CORE_AFTER = ("ui",)
# The config keys the core checks read (what `mfhelm config` writes, either profile).
REQUIRED_CONFIG = ("METAFLOW_SERVICE_URL", "METAFLOW_DATASTORE_SYSROOT_AZURE",
                   "METAFLOW_AZURE_STORAGE_BLOB_SERVICE_ENDPOINT")
# Set for the Metaflow processes verify starts, not read from the user's environment.
_OWN_ENV = ("METAFLOW_HOME", "METAFLOW_PROFILE")
# After a stop, how long a check's thread has to notice (its children are gone).
_THREAD_GRACE = 5.0


@dataclass
class Row:
    """One line of the table."""

    check: str
    result: str                 # "ok <detail>", "FAILED", "skipped (<why>)", "not run"
    seconds: float | None = None


# ------------------------------------------------------------------ the checks

def all_checks() -> list[Check]:
    """Every layer, in the order verify runs them."""
    from mfhelm.verify import checks_core

    try:
        from mfhelm.verify.checks_orchestrators import CHECKS as orchestrators
    except ModuleNotFoundError as exc:  # that module comes from another branch
        if exc.name != "mfhelm.verify.checks_orchestrators":
            raise
        orchestrators = []
    core = {c.name: c for c in checks_core.CHECKS}
    return ([core[n] for n in CORE_BEFORE] + list(orchestrators)
            + [core[n] for n in CORE_AFTER])


# ------------------------------------------------------------- the user's config

def config_file(profile: str | None) -> Path:
    """Where Metaflow reads its config: $METAFLOW_HOME (or ~/.metaflowconfig)
    /config.json, or config_<profile>.json for --config-profile (default:
    $METAFLOW_PROFILE, as Metaflow itself does)."""
    from mfhelm.metaflow_config import config_path

    if profile is None:
        profile = os.environ.get("METAFLOW_PROFILE") or None
    return config_path(profile)


def load_config(path: Path) -> dict[str, str]:
    """The config the checks run with: the file, under the METAFLOW_* variables
    of this environment (Metaflow prefers those to the file, and the runs
    verify starts inherit them)."""
    from mfhelm import userfiles

    if not os.path.lexists(path):
        raise MfhelmError(f"no Metaflow config at {path}: write it with `mfhelm config` "
                          "(`mfhelm config --local` for a local stack), or name another with "
                          "--config-profile")
    data = userfiles.load_json(path, invalid="fix it, or write it again with `mfhelm config`")
    if not isinstance(data, dict):
        raise MfhelmError(f"{path}: not a JSON object; write it again with `mfhelm config`")
    config = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    config |= {k: v for k, v in os.environ.items()
               if k.startswith("METAFLOW_") and k not in _OWN_ENV}
    missing = [k for k in REQUIRED_CONFIG if not config.get(k)]
    if missing:
        raise MfhelmError(f"{path} has no {', '.join(missing)}: it is not a config "
                          "`mfhelm config` wrote for this stack; write it again")
    datastore = config.get("METAFLOW_DEFAULT_DATASTORE", "")
    if datastore != "azure":
        raise MfhelmError(f"{path}: METAFLOW_DEFAULT_DATASTORE is {datastore!r}, not 'azure'; "
                          "runs would not reach the stack's Blob container: write it again "
                          "with `mfhelm config`")
    return config


def metaflow_env(stack: Stack, run: Run | None = None) -> dict[str, str]:
    """The environment of a Metaflow process verify starts: the user's, with
    Metaflow pointed at the config verify checked (its directory, its profile)
    and, given the run, at the stack's cluster (Metaflow's Kubernetes client
    takes the kubeconfig's current context)."""
    env = dict(os.environ)
    env["METAFLOW_HOME"] = str(stack.config_file.parent)
    name = stack.config_file.name
    if name.startswith("config_") and name.endswith(".json"):
        env["METAFLOW_PROFILE"] = name.removeprefix("config_").removesuffix(".json")
    else:
        env.pop("METAFLOW_PROFILE", None)
    if run is not None:
        kubeconfig = _kubeconfig(stack, run)
        if kubeconfig:
            env["KUBECONFIG"] = kubeconfig
    env.setdefault("USERNAME", env.get("USER") or "mfhelm-verify")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _kubeconfig(stack: Stack, run: Run) -> str | None:
    """The target's kubeconfig; with --context, a copy in the run's directory
    whose current context is that one."""
    path = stack.target.kubeconfig or os.environ.get("KUBECONFIG")
    if not stack.target.context:
        return path
    import yaml

    copy = run.workdir / "kubeconfig"
    if not copy.exists():
        source = Path(path or Path.home() / ".kube" / "config").expanduser()
        doc = yaml.safe_load(source.read_text())
        doc["current-context"] = stack.target.context
        run.workdir.mkdir(parents=True, exist_ok=True)
        copy.touch(mode=0o600)
        copy.write_text(yaml.safe_dump(doc))
    return str(copy)


# ------------------------------------------------------------- the release

def _enabled(values: dict[str, Any], defaults: dict[str, Any], key: str) -> bool:
    for tree in (values, defaults):
        section = tree.get(key)
        if isinstance(section, dict) and isinstance(section.get("enabled"), bool):
            return bool(section["enabled"])
    return False


def _chart_defaults() -> dict[str, Any]:
    import yaml

    from mfhelm.helm import find_chart

    return dict(yaml.safe_load((find_chart() / "values.yaml").read_text()) or {})


def resolve_stack(target: Any, *, config_path: Path, local: bool) -> Stack:
    """The release as Helm keeps it (profile, flow namespace, which layers are
    on, the chart's appVersion) and the Metaflow config the user runs with."""
    from mfhelm.helm import Helm

    config = load_config(config_path)
    helm = Helm(kubeconfig=target.kubeconfig, context=target.context)
    info = helm.status(target.release, namespace=target.namespace)
    if info is None:
        raise MfhelmError(f"no release {target.release!r} in namespace {target.namespace!r}; "
                          "run mfhelm install first")
    values = helm.user_values(target.release, namespace=target.namespace)
    defaults = _chart_defaults()
    profile = str(values.get("profile") or defaults.get("profile") or "azure")
    if local and profile != "local":
        raise MfhelmError(f"release {target.release!r} is the {profile} profile; run "
                          "mfhelm verify without --local")
    flows = values.get("flows") or {}
    return Stack(
        target=target, profile=profile,
        flow_namespace=str(flows.get("namespace") or target.namespace),
        chart_app_version=info.app_version,
        argo=_enabled(values, defaults, "argo-workflows"),
        argo_events=_enabled(values, defaults, "argo-events"),
        airflow=_enabled(values, defaults, "airflow"),
        config=config, config_file=config_path)


# ------------------------------------------------------------- the runner

class Progress:
    """A spinner line on stderr naming the running check and its seconds, on a
    terminal only (logs get the table alone)."""

    def __init__(self, enabled: bool | None = None) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self.status: Any = None

    def show(self, check: str, seconds: float) -> None:
        if not self.enabled:
            return
        from rich.text import Text

        line = Text(f"verify: {check} ({seconds:.0f}s)", no_wrap=True, overflow="ellipsis")
        if self.status is None:
            self.status = self.console.status(line)
            self.status.start()
        else:
            self.status.update(line)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def _call(check: Check, stack: Stack, run: Run, timeout_text: str,
          progress: Progress | None) -> str:
    """check.run in a worker thread, waited for until the deadline. On the
    deadline or an interrupt the check's child processes are stopped."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["detail"] = check.run(stack, run)
        except BaseException as exc:  # noqa: BLE001 - carried to the main thread
            box["error"] = exc

    start = time.monotonic()
    worker = threading.Thread(target=work, name=f"mfhelm-verify {check.name}", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            left = run.deadline - time.monotonic()
            if left <= 0:
                break
            if progress is not None:
                progress.show(check.name, time.monotonic() - start)
            worker.join(min(0.25, left))
    except BaseException:
        proc.stop_all()
        worker.join(_THREAD_GRACE)
        raise
    if worker.is_alive():
        proc.stop_all()
        worker.join(_THREAD_GRACE)
        raise Failed(f"did not finish within --timeout {timeout_text}",
                     "give it longer (--timeout), or look at what it waits for with --keep")
    if "error" in box:
        raise box["error"]
    return str(box.get("detail") or "")


def _as_failed(exc: Exception) -> Failed | None:
    """An error a check met that the user can act on, as a check's failure."""
    if isinstance(exc, Failed):
        return exc
    if isinstance(exc, MfhelmError):
        return Failed(str(exc), "")
    if "kubernetes" in sys.modules:
        from mfhelm import kube

        err = kube.user_error(exc)
        if err is not None:
            return Failed(str(err), "")
    return None


def run_checks(stack: Stack, run: Run, checks: Sequence[Check], rows: list[Row], *,
               timeout_text: str = "", progress: Progress | None = None
               ) -> tuple[str, Failed] | None:
    """Each check in order; a row for each appended to `rows` as it ends (so
    the caller has them even when interrupted). Stops at the first failure:
    the rest are `not run`. Returns the failed check's name and failure."""
    failure: tuple[str, Failed] | None = None
    for i, check in enumerate(checks):
        if failure is not None:
            rows.append(Row(check.name, "not run"))
            continue
        if not check.enabled(stack):
            rows.append(Row(check.name, "skipped (not in this release)"))
            continue
        start = time.monotonic()
        try:
            detail = _call(check, stack, run, timeout_text, progress)
        except Skipped as exc:
            rows.append(Row(check.name, f"skipped ({exc.why})", time.monotonic() - start))
            continue
        except Exception as exc:
            failed = _as_failed(exc)
            if failed is None:
                raise
            rows.append(Row(check.name, "FAILED", time.monotonic() - start))
            failure = (check.name, failed)
            continue
        except BaseException:
            rows.append(Row(check.name, "interrupted", time.monotonic() - start))
            rows.extend(Row(c.name, "not run") for c in checks[i + 1:])
            raise
        rows.append(Row(check.name, f"ok {detail}".rstrip(), time.monotonic() - start))
    return failure


def run_cleanups(run: Run, warn: Callable[[str], None]) -> None:
    """The undo list, last-first; one that fails is reported and the rest run.
    With --keep nothing is undone and what stays is listed."""
    if run.keep:
        for what, _ in reversed(run.cleanups):
            warn(f"kept (--keep): {what}")
        run.cleanups.clear()
        return
    while run.cleanups:
        what, undo = run.cleanups.pop()
        try:
            undo()
        except Exception as exc:  # noqa: BLE001 - the others still run
            warn(f"cleanup failed: {what}: {' '.join(str(exc).split())}")


def table(rows: Sequence[Row]) -> str:
    head = Row("check", "result")
    name_w = max(len(r.check) for r in [head, *rows])
    result_w = max(len(r.result) for r in [head, *rows])
    lines = [f"{'check':<{name_w}}  {'result':<{result_w}}  seconds"]
    for r in rows:
        secs = f"{r.seconds:7.1f}" if r.seconds is not None else ""
        lines.append(f"{r.check:<{name_w}}  {r.result:<{result_w}}  {secs}".rstrip())
    return "\n".join(lines)


def new_run(*, timeout_seconds: float, keep: bool, api: Any = None) -> Run:
    """A Run with its scratch directory (the shipped flows copied in), whose
    removal is the first cleanup registered, so it runs last."""
    workdir = Path(tempfile.mkdtemp(prefix="mfhelm-verify-"))
    run = Run(workdir=workdir, deadline=time.monotonic() + timeout_seconds, keep=keep, api=api)
    run.on_cleanup(f"scratch directory {workdir}",
                   lambda: shutil.rmtree(workdir, ignore_errors=True))
    copy_flows(workdir)
    return run


def copy_flows(workdir: Path) -> list[str]:
    from importlib.resources import files

    copied = []
    for entry in (files("mfhelm.verify") / "flows").iterdir():
        if entry.name.endswith(".py"):
            (workdir / entry.name).write_bytes(entry.read_bytes())
            copied.append(entry.name)
    return sorted(copied)


def verify(target: Any, *, config_path: Path, local: bool, timeout: str, keep: bool,
           echo: Callable[[str], None], warn: Callable[[str], None],
           checks: Sequence[Check] | None = None) -> None:
    """The whole command: the stack resolved, then execute()."""
    from mfhelm import kube
    from mfhelm.settings import check_timeout, duration_seconds

    seconds = duration_seconds(check_timeout(timeout))
    stack = resolve_stack(target, config_path=config_path, local=local)
    api = kube.api_client(target.kubeconfig, target.context)
    run = new_run(timeout_seconds=seconds, keep=keep, api=api)
    execute(stack, run, all_checks() if checks is None else checks, timeout_text=timeout,
            echo=echo, warn=warn)


def execute(stack: Stack, run: Run, checks: Sequence[Check], *, timeout_text: str,
            echo: Callable[[str], None], warn: Callable[[str], None],
            progress: Progress | None = None) -> None:
    """Run the checks, print the table, undo (unless run.keep). Raises
    MfhelmError naming the failed check, or Interrupted on Ctrl-C, after both."""
    rows: list[Row] = []
    progress = progress or Progress()
    failure = None
    interrupted: Interrupted | None = None
    try:
        failure = run_checks(stack, run, checks, rows, timeout_text=timeout_text,
                             progress=progress)
    except Interrupted as exc:
        interrupted = exc
    finally:
        progress.close()
        echo(table(rows))
        # A Ctrl-C now waits for the undo list to finish (a second one kills
        # the children the undo runs).
        with proc.deferred_signals():
            run_cleanups(run, warn)
    if interrupted is not None:
        signum = interrupted.args[0] if interrupted.args else 2
        raise Interrupted(signum, "verify stopped; " + (
            "what it made is kept (--keep)" if run.keep else "what it made was removed"))
    if failure is not None:
        name, failed = failure
        raise MfhelmError(f"{name}: {failed}")
