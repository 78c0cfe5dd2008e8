"""Helm through pyhelm3: chart preparation, install/upgrade with rollback,
status and uninstall.

Values reach helm on stdin (pyhelm3 passes `-f -`), never in argv.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mfhelm import chartfiles
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

# pyhelm3 logs "command failed: <argv>" at WARNING before it raises; with no
# logging configured, Python prints that to stderr ahead of mfhelm's own
# line. The failure is reported once, by _helm_message.
logging.getLogger("pyhelm3").addHandler(logging.NullHandler())


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
def chart_dir(source: Path | OciChart | None, *, helm: str) -> Iterator[Path]:
    """The chart directory to install: find_chart() for a path or None, or
    the chart pulled from an OCI registry (removed afterwards)."""
    if isinstance(source, OciChart):
        with pulled_chart(source, helm=helm) as path:
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


def prepare_chart(chart: Path, values: dict[str, Any], *, helm: str | None = None) -> Path:
    """A chart directory helm can install with these values.

    Enabled dependencies must be present: if their archives are missing,
    `helm dependency build` fetches them (this needs the chart repositories).
    Disabled dependencies whose archives are missing are dropped from a
    temporary copy of the chart, since Helm refuses to render a chart with
    missing dependencies even when their condition is false.
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
        proc = subprocess.run([binary, "dependency", "build", str(chart)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            names = ", ".join(f"{d['name']} {d['version']}" for d in enabled_missing)
            reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
            raise MfhelmError(
                f"could not fetch chart dependencies ({names}): {reason}. Run `helm dependency "
                f"build {chart}` where the chart repositories are reachable, or disable them"
            )
    return drop_missing_dependencies(chart)


@contextmanager
def prepared_chart(chart: Path, values: dict[str, Any], *,
                   helm: str | None = None) -> Iterator[Path]:
    """prepare_chart(), and the temporary copy it may make removed afterwards."""
    path = prepare_chart(chart, values, helm=helm)
    try:
        yield path
    finally:
        if path != chart:
            shutil.rmtree(path.parent, ignore_errors=True)


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
    copy = Path(tempfile.mkdtemp(prefix="mfhelm-chart-")) / chart.name
    try:
        shutil.copytree(chart, copy)
    except (OSError, shutil.Error) as exc:
        shutil.rmtree(copy.parent, ignore_errors=True)
        # shutil.Error carries one (source, destination, reason) per file.
        detail = exc.args[0][0][2] if isinstance(exc, shutil.Error) and exc.args[0] \
            else getattr(exc, "strerror", None) or str(exc)
        raise MfhelmError(f"chart {chart}: cannot copy it to drop missing dependencies "
                          f"({detail})") from None
    meta["dependencies"] = [d for d in meta["dependencies"] if d["name"] not in missing]
    if not meta["dependencies"]:
        del meta["dependencies"]
    (copy / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
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
    """A thin, synchronous face over helm (and pyhelm3, for reading releases)
    for one kube context.

    The `helm version` check starts when the object is made and is finished
    by check() (install_or_upgrade calls it): a caller can do other work while
    helm answers. pyhelm3 (and the pydantic models behind it) is imported only
    by the methods that read or remove releases.
    """

    def __init__(self, *, kubeconfig: str | None = None, context: str | None = None,
                 timeout: str = "10m", executable: str | None = None,
                 check: bool = True) -> None:
        self.executable = executable or helm_binary()
        self.timeout = timeout
        self.kubeconfig = str(kubeconfig) if kubeconfig else None
        self.context = context
        self._pyhelm: Any = None
        self._version: tuple[int, int, int] | None = None
        try:
            self._version_proc: subprocess.Popen[str] | None = subprocess.Popen(
                [self.executable, "version", "--template", "{{ .Version }}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
        except OSError as exc:
            raise MfhelmError(f"cannot use {self.executable}: {exc.strerror or exc}") from None
        if check:
            self.check()

    def check(self) -> tuple[int, int, int]:
        """The helm version; one clear error if helm does not answer or is too old."""
        if self._version is not None:
            return self._version
        proc = self._version_proc
        assert proc is not None
        out, err = proc.communicate()
        self._version_proc = None
        match = _VERSION_RE.fullmatch(out.strip())
        if proc.returncode != 0 or match is None:
            detail = (err.strip().splitlines() or [out.strip() or f"exit {proc.returncode}"])[-1]
            raise MfhelmError(f"cannot use {self.executable}: `helm version` said {detail!r}")
        version = (int(match[1]), int(match[2]), int(match[3] or 0))
        if version[:2] < MIN_HELM:
            need = ".".join(map(str, MIN_HELM))
            raise MfhelmError(f"helm {out.strip().lstrip('v')} is too old; mfhelm needs {need}+")
        self._version = version
        return version

    def close(self) -> None:
        """Reap a `helm version` that check() was never asked to read."""
        proc, self._version_proc = self._version_proc, None
        if proc is not None:
            proc.communicate()

    @property
    def version(self) -> str:
        return ".".join(map(str, self.check()))

    @property
    def _client(self) -> Any:
        """pyhelm3's client, made on first use."""
        if self._pyhelm is None:
            from pyhelm3 import Client

            self.check()
            kw: dict[str, Any] = {"executable": self.executable,
                                  "default_timeout": self.timeout}
            if self.kubeconfig:
                kw["kubeconfig"] = Path(self.kubeconfig)
            if self.context:
                kw["kubecontext"] = self.context
            try:
                self._pyhelm = Client(**kw)
            except Exception as exc:  # pyhelm3 runs `helm version` again
                raise MfhelmError(f"cannot use {self.executable}: {exc}") from None
        return self._pyhelm

    def _run(self, coro: Any) -> Any:
        from pyhelm3 import errors

        try:
            return asyncio.run(coro)
        except errors.Error as exc:
            raise MfhelmError(_helm_message(exc)) from None

    def install_or_upgrade(self, release: str, chart: Path, values: dict[str, Any], *,
                           namespace: str, wait: bool = True) -> ReleaseInfo:
        """`helm upgrade --install --rollback-on-failure --wait`: a failed upgrade
        rolls back, so the previous revision keeps running.

        helm runs in its own process group (so a terminal's Ctrl-C reaches
        only mfhelm), values on stdin. If mfhelm is interrupted (Ctrl-C or
        SIGTERM, raised by the CLI as errors.Interrupted), the whole group is
        stopped before the interrupt goes on: no helm works on unseen.
        """
        major = self.check()[0]
        cmd = [self.executable, "upgrade", release, str(chart), "--install",
               "--namespace", namespace, "--create-namespace", "--history-max", "10",
               "--output", "json", "--timeout", self.timeout, "--values", "-",
               "--rollback-on-failure" if major >= 4 else "--atomic"]
        if wait:
            cmd += ["--wait", "--wait-for-jobs"]
        if self.kubeconfig:
            cmd += ["--kubeconfig", self.kubeconfig]
        if self.context:
            cmd += ["--kube-context", self.context]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(json.dumps(values).encode())
        except BaseException:
            stop_process_group(proc)
            raise
        if proc.returncode != 0:
            raise MfhelmError(_helm_message(_HelmFailed(err)))
        doc = json.loads(out[out.index(b"{"):])
        meta = doc["chart"]["metadata"]
        return ReleaseInfo(name=doc["name"], namespace=doc["namespace"],
                           revision=int(doc["version"]), status=str(doc["info"]["status"]),
                           chart_version=str(meta["version"]),
                           app_version=str(meta.get("appVersion") or ""))

    def status(self, release: str, *, namespace: str) -> ReleaseInfo | None:
        from pyhelm3 import errors

        async def go() -> ReleaseInfo:
            rev = await self._client.get_current_revision(release, namespace=namespace)
            return _info(rev, await rev.chart_metadata())

        try:
            return asyncio.run(go())
        except errors.ReleaseNotFoundError:
            return None
        except errors.Error as exc:
            raise MfhelmError(_helm_message(exc)) from None

    def user_values(self, release: str, *, namespace: str) -> dict[str, Any]:
        """The values the current revision was installed with (`helm get values`)."""

        async def go() -> dict[str, Any]:
            rev = await self._client.get_current_revision(release, namespace=namespace)
            return dict(await rev.values() or {})

        result: dict[str, Any] = self._run(go())
        return result

    def uninstall(self, release: str, *, namespace: str) -> None:
        self._run(self._client.uninstall_release(release, namespace=namespace, wait=True,
                                                 timeout=self.timeout))


class _HelmFailed(Exception):
    """A failed helm run, shaped like pyhelm3's errors for _helm_message."""

    def __init__(self, stderr: bytes) -> None:
        super().__init__("helm failed")
        self.stderr = stderr


def stop_process_group(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM to the child's whole process group, SIGKILL after `grace`."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _info(rev: Any, meta: Any) -> ReleaseInfo:
    return ReleaseInfo(
        name=rev.release.name,
        namespace=rev.release.namespace,
        revision=rev.revision,
        status=str(getattr(rev.status, "value", rev.status)),
        chart_version=str(meta.version),
        app_version=str(meta.app_version or ""),
    )


def _helm_message(exc: Exception) -> str:
    stderr = getattr(exc, "stderr", b"")
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else str(stderr)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return f"helm failed: {exc}"
    # Schema failures list each offending key on its own line; keep them.
    if "schema" in text:
        return "helm refused the values: " + " ".join(lines)
    return "helm: " + lines[-1].removeprefix("Error: ")
