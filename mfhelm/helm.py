"""Helm: chart preparation, install/upgrade with rollback, status and
uninstall, each one helm process run through mfhelm.proc (bounded in time,
in its own process group, stopped as a group on a timeout or an interrupt).

Values reach helm on stdin (`--values -`), never in argv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from mfhelm import chartfiles, proc
from mfhelm.errors import MfhelmError
from mfhelm.oci import OciChart, pulled_chart

# The oldest Helm mfhelm supports (major, minor); CI uses the Helm 4 in tools.toml.
MIN_HELM = (3, 14)
# `helm version --template '{{ .Version }}'`: v4.3.1, v3.14.2, v3.15.0-rc.1, or
# v4.3 from a build without the version stamped.
_VERSION_RE = re.compile(r"v?([0-9]+)\.([0-9]+)(?:\.([0-9]+))?(?:[-+][0-9A-Za-z.+-]*)?")
HELM_ENV = "MFHELM_HELM"
# The umbrella's subcharts, each switched by `<name>.enabled` in the values.
SUBCHARTS = ("argo-workflows", "airflow")
# Past helm's own --timeout, what helm may still take to give up: after a
# failed wait `--rollback-on-failure` rolls back and waits up to --timeout
# again, so an upgrade is bounded by twice --timeout plus this.
HELM_SLACK = 120.0


def find_chart(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The umbrella chart: an explicit path, the packaged copy, or the repo's."""
    here = Path(__file__).resolve().parent
    if explicit:
        candidates = [Path(explicit)]
    else:
        candidates = [here / "chart", here.parent / "charts" / "metaflow"]
    for path in candidates:
        if (path / "Chart.yaml").is_file():
            return chartfiles.check_chart(path)
    raise MfhelmError(f"chart not found at {candidates[0]}; pass --chart PATH")


@contextmanager
def chart_dir(source: Path | OciChart | None, *, helm: str,
              timeout: float = 600.0) -> Iterator[Path]:
    """The chart directory to install: find_chart() for a path or None, or
    the chart pulled from an OCI registry within `timeout` seconds (removed
    afterwards)."""
    if isinstance(source, OciChart):
        with pulled_chart(source, helm=helm, timeout=timeout) as path:
            yield path
    else:
        yield find_chart(source)


def find_helm() -> str | None:
    """The helm binary: $MFHELM_HELM if set, else the first `helm` on PATH."""
    configured = os.environ.get(HELM_ENV)
    if configured:
        # A directory is "executable" to os.access too.
        return configured if os.path.isfile(configured) and os.access(configured, os.X_OK) \
            else None
    return shutil.which("helm")


def helm_binary() -> str:
    """find_helm(), or one clear error saying what is missing."""
    found = find_helm()
    if found:
        return found
    if os.environ.get(HELM_ENV):
        raise MfhelmError(f"{HELM_ENV}={os.environ[HELM_ENV]} is not an executable file")
    raise MfhelmError("helm not found on PATH; install Helm 3.14+ or run `make dev`")


def _enabled(values: dict[str, Any], defaults: dict[str, Any], condition: str) -> bool:
    def lookup(tree: dict[str, Any]) -> Any:
        node: Any = tree
        for part in condition.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    value = lookup(values)
    return bool(lookup(defaults) if value is None else value)


def _archive_present(chart: Path, dep: dict[str, Any]) -> bool:
    charts = chart / "charts"
    return (charts / f"{dep['name']}-{dep['version']}.tgz").exists() or (
        charts / dep["name"] / "Chart.yaml"
    ).exists()


def prepare_chart(chart: Path, values: dict[str, Any], *, helm: str | None = None,
                  timeout: float = 600.0) -> Path:
    """A chart directory helm can install with these values.

    Enabled dependencies must be present: if their archives are missing,
    `helm dependency build` fetches them (this needs the chart repositories).
    Disabled dependencies whose archives are missing are dropped from a
    temporary copy of the chart, since Helm refuses to render a chart with
    missing dependencies even when their condition is false. The fetch
    gets `timeout` seconds.
    """
    meta = chartfiles.chart_meta(chart)
    defaults = chartfiles.chart_defaults(chart)
    deps = meta.get("dependencies") or []
    declared = {d["name"] for d in deps}
    # A chart packaged without its subcharts (`make chart-push SUBCHARTS=drop`)
    # would install without them and say nothing: refuse instead.
    absent = [name for name in SUBCHARTS
              if _enabled(values, defaults, f"{name}.enabled") and name not in declared]
    if absent:
        raise MfhelmError(
            f"chart {meta.get('name')} {meta.get('version')} has no {', '.join(absent)} "
            "subchart (packaged without it): install with it disabled, or use a chart that "
            "has it")
    enabled_missing = [d for d in deps if _enabled(values, defaults, d.get("condition", ""))
                       and not _archive_present(chart, d)]
    if enabled_missing:
        binary = helm or helm_binary()
        names = ", ".join(f"{d['name']} {d['version']}" for d in enabled_missing)
        built = proc.run([binary, "dependency", "build", str(chart)], timeout=timeout,
                         what=f"fetching the chart dependencies ({names})")
        if built.returncode != 0:
            reason = built.stderr.strip().splitlines()[-1] if built.stderr.strip() else "no output"
            raise MfhelmError(
                f"could not fetch chart dependencies ({names}): {reason}. Run `helm dependency "
                f"build {chart}` where the chart repositories are reachable, or disable them"
            )
    return drop_missing_dependencies(chart)


@contextmanager
def prepared_chart(chart: Path, values: dict[str, Any], *, helm: str | None = None,
                   timeout: float = 600.0) -> Iterator[Path]:
    """prepare_chart(), and the temporary copy it may make removed afterwards."""
    path = prepare_chart(chart, values, helm=helm, timeout=timeout)
    try:
        yield path
    finally:
        if path != chart:
            proc.remove_tree(path.parent)


def missing_dependencies(chart: Path) -> list[str]:
    """Declared dependencies whose archive is not in the chart's charts/."""
    meta = chartfiles.chart_meta(chart)
    return [d["name"] for d in meta.get("dependencies") or [] if not _archive_present(chart, d)]


def drop_missing_dependencies(chart: Path) -> Path:
    """The chart itself when complete, else a temporary copy whose Chart.yaml
    lists only the dependencies present (Helm refuses to render otherwise)."""
    missing = missing_dependencies(chart)
    if not missing:
        return chart
    meta = chartfiles.chart_meta(chart)
    tmp = proc.temp_dir("mfhelm-chart-")
    copy = tmp / chart.name
    try:
        shutil.copytree(chart, copy)
    except (OSError, shutil.Error) as exc:
        proc.remove_tree(tmp)
        # shutil.Error carries one (source, destination, reason) per file.
        detail = exc.args[0][0][2] if isinstance(exc, shutil.Error) and exc.args[0] \
            else getattr(exc, "strerror", None) or str(exc)
        raise MfhelmError(f"chart {chart}: cannot copy it to drop missing dependencies "
                          f"({detail})") from None
    except BaseException:
        proc.remove_tree(tmp)
        raise
    try:
        meta["dependencies"] = [d for d in meta["dependencies"] if d["name"] not in missing]
        if not meta["dependencies"]:
            del meta["dependencies"]
        (copy / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    except BaseException:
        proc.remove_tree(tmp)
        raise
    return copy


@dataclass(frozen=True)
class ReleaseInfo:
    name: str
    namespace: str
    revision: int
    status: str
    chart_version: str
    app_version: str


class Helm:
    """A thin, synchronous face over the helm binary for one kube context.

    The `helm version` check starts when the object is made and is finished
    by check() (install_or_upgrade calls it): a caller can do other work while
    helm answers. Every helm run is bounded (proc.QUICK_TIMEOUT for the quick
    ones, --timeout for those that wait), in its own process group, and
    stopped as a group when it overruns or mfhelm is interrupted.
    """

    def __init__(self, *, kubeconfig: str | None = None, context: str | None = None,
                 timeout: str = "10m", executable: str | None = None,
                 check: bool = True) -> None:
        self.executable = executable or helm_binary()
        self.timeout = timeout
        self.kubeconfig = str(kubeconfig) if kubeconfig else None
        self.context = context
        self._version: tuple[int, int, int] | None = None
        try:
            self._version_proc: Any = proc.start(
                [self.executable, "version", "--template", "{{ .Version }}"])
        except MfhelmError as exc:
            raise MfhelmError(f"cannot use {self.executable}: "
                              f"{str(exc).split(': ', 1)[-1]}") from None
        if check:
            self.check()

    def check(self) -> tuple[int, int, int]:
        """The helm version; one clear error if helm does not answer (within
        proc.QUICK_TIMEOUT) or is too old."""
        if self._version is not None:
            return self._version
        child = self._version_proc
        assert child is not None
        try:
            out, err = child.communicate(timeout=proc.QUICK_TIMEOUT)
        except BaseException as exc:
            proc.stop(child)
            self._version_proc = None
            if isinstance(exc, Exception):
                raise MfhelmError(
                    f"cannot use {self.executable}: `helm version` did not answer within "
                    f"{proc.seconds_text(proc.QUICK_TIMEOUT)}; stopped it") from None
            raise
        proc.forget(child)
        self._version_proc = None
        match = _VERSION_RE.fullmatch(out.strip())
        if child.returncode != 0 or match is None:
            detail = (err.strip().splitlines() or [out.strip() or f"exit {child.returncode}"])[-1]
            raise MfhelmError(f"cannot use {self.executable}: `helm version` said {detail!r}")
        version = (int(match[1]), int(match[2]), int(match[3] or 0))
        if version[:2] < MIN_HELM:
            need = ".".join(map(str, MIN_HELM))
            raise MfhelmError(f"helm {out.strip().lstrip('v')} is too old; mfhelm needs {need}+")
        self._version = version
        return version

    def close(self) -> None:
        """Stop and reap a `helm version` that check() was never asked to read."""
        child, self._version_proc = self._version_proc, None
        if child is not None:
            proc.stop(child)

    @property
    def version(self) -> str:
        return ".".join(map(str, self.check()))

    def _timeout_seconds(self) -> float:
        from mfhelm.settings import duration_seconds

        return duration_seconds(self.timeout)

    def _kube_args(self) -> list[str]:
        args = []
        if self.kubeconfig:
            args += ["--kubeconfig", self.kubeconfig]
        if self.context:
            args += ["--kube-context", self.context]
        return args

    def _helm(self, *args: str, what: str, timeout: float = proc.QUICK_TIMEOUT,
              input: bytes | None = None) -> Any:
        self.check()
        return proc.run([self.executable, *args, *self._kube_args()], timeout=timeout,
                        what=what, input=input, text=input is None)

    def upgrade_bound(self) -> float:
        """How long an install_or_upgrade may take in all: helm's wait, the
        rollback's wait, and HELM_SLACK."""
        return 2 * self._timeout_seconds() + HELM_SLACK

    def install_or_upgrade(self, release: str, chart: Path, values: dict[str, Any], *,
                           namespace: str, wait: bool = True) -> ReleaseInfo:
        """`helm upgrade --install --rollback-on-failure --wait`: a failed upgrade
        rolls back, so the previous revision keeps running.

        helm runs in its own process group (so a terminal's Ctrl-C reaches
        only mfhelm), values on stdin. If mfhelm is interrupted (Ctrl-C or
        SIGTERM, raised by the CLI as errors.Interrupted), or helm overruns
        upgrade_bound() (proc.TimedOut), the whole group is stopped before
        the exception goes on: no helm works on unseen. A failed wait (helm's
        --timeout, a failed Job) raises HelmWaitFailed.
        """
        major = self.check()[0]
        cmd = ["upgrade", release, str(chart), "--install",
               "--namespace", namespace, "--create-namespace", "--history-max", "10",
               "--output", "json", "--timeout", self.timeout, "--values", "-",
               "--rollback-on-failure" if major >= 4 else "--atomic"]
        if wait:
            cmd += ["--wait", "--wait-for-jobs"]
        done = self._helm(*cmd, what=f"helm upgrade --install {release}",
                          timeout=self.upgrade_bound(), input=json.dumps(values).encode())
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace")
            if wait and wait_failed(stderr):
                raise HelmWaitFailed(stderr)
            raise MfhelmError(_helm_message(stderr))
        out = done.stdout
        return _info(json.loads(out[out.index(b"{"):]))

    def status(self, release: str, *, namespace: str) -> ReleaseInfo | None:
        """The release's current revision (`helm status`), None if there is none."""
        done = self._helm("status", release, "--namespace", namespace, "--output", "json",
                          what=f"helm status {release}")
        if done.returncode != 0:
            if "release: not found" in done.stderr:
                return None
            raise MfhelmError(_helm_message(done.stderr))
        info = _info(json.loads(done.stdout))
        if not info.chart_version:
            # Helm 4's `helm status -o json` leaves the chart out.
            meta = self._metadata(release, namespace=namespace)
            info = replace(info, chart_version=str(meta.get("version") or ""),
                           app_version=str(meta.get("appVersion") or ""))
        return info

    def user_values(self, release: str, *, namespace: str) -> dict[str, Any]:
        """The values the current revision was installed with (`helm get values`)."""
        done = self._helm("get", "values", release, "--namespace", namespace,
                          "--output", "json", what=f"helm get values {release}")
        if done.returncode != 0:
            raise MfhelmError(_helm_message(done.stderr))
        return dict(json.loads(done.stdout or "null") or {})

    def chart_version(self, release: str, *, namespace: str) -> str:
        """The version of the chart the current revision runs (`helm get
        metadata`: `helm status -o json` leaves the chart out in Helm 4)."""
        return str(self._metadata(release, namespace=namespace).get("version") or "")

    def _metadata(self, release: str, *, namespace: str) -> dict[str, Any]:
        done = self._helm("get", "metadata", release, "--namespace", namespace,
                          "--output", "json", what=f"helm get metadata {release}")
        if done.returncode != 0:
            raise MfhelmError(_helm_message(done.stderr))
        return dict(json.loads(done.stdout or "null") or {})

    def uninstall(self, release: str, *, namespace: str) -> None:
        """`helm uninstall --wait`, bounded by --timeout plus HELM_SLACK."""
        done = self._helm("uninstall", release, "--namespace", namespace, "--wait",
                          "--timeout", self.timeout, what=f"helm uninstall {release}",
                          timeout=self._timeout_seconds() + HELM_SLACK)
        if done.returncode != 0:
            raise MfhelmError(_helm_message(done.stderr))


class HelmWaitFailed(MfhelmError):
    """helm gave up waiting for the release's resources (its --timeout ran
    out, or a Job failed); `stderr` is what helm said."""

    def __init__(self, stderr: str) -> None:
        super().__init__(_helm_message(stderr))
        self.stderr = stderr


# What helm says when its wait ends without the resources ready: Helm 4's
# watcher ("resource Deployment/ns/name not ready. status: InProgress, ...",
# then "context deadline exceeded"), Helm 3's legacy waiter ("timed out
# waiting for the condition"), a failed Job ("job ... failed", "BackoffLimitExceeded").
_WAIT_FAILED = ("context deadline exceeded", "timed out waiting for the condition",
                " not ready. status:", "backofflimitexceeded", "deadlineexceeded")


def wait_failed(stderr: str) -> bool:
    low = stderr.lower()
    return any(marker in low for marker in _WAIT_FAILED)


# "resource Deployment/ns/name not ready. status: InProgress, message: ..."
_NOT_READY_RE = re.compile(r"resource (\w+)/([^/\s]+)/(\S+) not ready\. status: (\w+)",
                           re.ASCII)


def waited_for(stderr: str) -> list[tuple[str, str, str]]:
    """The (kind, namespace, name) of each resource helm names as not ready."""
    return list(dict.fromkeys((m[1], m[2], m[3]) for m in _NOT_READY_RE.finditer(stderr)))


def _info(doc: dict[str, Any]) -> ReleaseInfo:
    """A release as `helm status -o json` and `helm upgrade -o json` print it."""
    meta = (doc.get("chart") or {}).get("metadata") or {}
    return ReleaseInfo(name=doc["name"], namespace=doc["namespace"],
                       revision=int(doc["version"]), status=str(doc["info"]["status"]),
                       chart_version=str(meta.get("version") or ""),
                       app_version=str(meta.get("appVersion") or ""))


def _helm_message(stderr: str | bytes) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return "helm failed without saying why"
    # Schema failures list each offending key on its own line; keep them.
    if "schema" in text:
        return "helm refused the values: " + " ".join(lines)
    return "helm: " + lines[-1].removeprefix("Error: ")
