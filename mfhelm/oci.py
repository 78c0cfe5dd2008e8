"""The chart as an OCI artifact: push it to a registry (`make chart-push`)
and pull it back for `mfhelm install --chart oci://REGISTRY/NAME --version X`.

Both go through the helm binary (`helm package`, `helm push`, `helm pull`),
so registry credentials from `helm registry login` and the system's trusted
CAs (or SSL_CERT_FILE) apply as they do for helm itself. A pulled chart is
unpacked into a temporary directory and installed from there like a chart
directory: the same schema check, the same dependency handling.

Usage (what `make chart-push` runs):
    python -m mfhelm.oci push REGISTRY [--plain-http] [--drop-subcharts] [--chart DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from mfhelm import proc
from mfhelm.errors import MfhelmError, remember_secret

SCHEME = "oci://"
# The version suffix of an archive pushed without its subcharts: a different
# tag, so it never stands in for the complete chart of the same version.
NO_SUBCHARTS = "nosubcharts"
# host[:port], then one or more lowercase path components (the OCI
# distribution spec's repository name grammar, without a tag or digest).
_HOST = r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF = re.compile(rf"{_HOST}(?:/{_COMPONENT})+")
_VERSION = re.compile(r"[A-Za-z0-9.+^~<>=*|, -]+")
# `helm package` and `helm push` (make chart-push): a bound for each.
PUSH_TIMEOUT = 600.0


@dataclass(frozen=True)
class OciChart:
    """A chart in an OCI registry: oci://REGISTRY/.../NAME at a version."""

    ref: str
    version: str
    plain_http: bool = False

    @property
    def name(self) -> str:
        return self.ref.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return f"{self.ref} {self.version}"


def is_oci(location: str | None) -> bool:
    return bool(location) and str(location).startswith(SCHEME)


def check_ref(ref: str, option: str = "--chart") -> str:
    """An oci:// reference without tag or digest; one clear line otherwise."""
    rest = ref[len(SCHEME):]
    path = rest.split("/", 1)[1] if "/" in rest else ""
    if "@" in rest:
        # user:password@host, or a digest: never echoed, since a password
        # may be in it (and may contain a '/').
        authority = rest.split("/", 1)[0]
        if "@" in authority:
            userinfo, _, host = authority.rpartition("@")
            remember_secret(userinfo.partition(":")[2])
            raise MfhelmError(f"{option}: credentials do not go in the reference; run "
                              f"`helm registry login {host}` once, then give oci://{host}/...")
        raise MfhelmError(f"{option}: give the version with --version, not in the reference "
                          "(oci://REGISTRY/NAME, without '@')")
    if ":" in path:
        raise MfhelmError(f"{option} {ref}: give the version with --version, not in the "
                          "reference (oci://REGISTRY/NAME)")
    if not _REF.fullmatch(rest):
        raise MfhelmError(f"{option} {ref}: expected oci://HOST[:PORT]/[PATH/]NAME with a "
                          "lowercase chart name")
    return ref


def chart_source(chart: str | None, version: str | None, *,
                 plain_http: bool = False) -> Path | OciChart | None:
    """What `--chart`, `--version` and `--plain-http` ask for, checked before
    anything runs: None (the packaged chart), a directory, or an OciChart."""
    if chart is None or not is_oci(chart):
        if chart is not None and "://" in chart:
            raise MfhelmError(f"--chart {chart}: only a chart directory or an "
                              "oci://REGISTRY/NAME reference is supported")
        if version is not None:
            raise MfhelmError("--version goes with --chart oci://REGISTRY/NAME; a chart "
                              "directory installs the version it holds")
        if plain_http:
            raise MfhelmError("--plain-http goes with --chart oci://REGISTRY/NAME")
        return Path(chart) if chart is not None else None
    check_ref(chart)
    if version is None or not version.strip():
        raise MfhelmError(f"--chart {chart} needs --version (the chart version to install, "
                          "e.g. --version 0.1.0)")
    if not _VERSION.fullmatch(version) or version.startswith("-"):
        raise MfhelmError(f"--version {version!r} is not a chart version or constraint")
    return OciChart(chart, version, plain_http)


def _helm_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
    # `helm dependency build` names the unreachable repository on stdout and
    # ends on a consequence ("no cached repository"): the cause is more useful.
    out = [ln.strip() for ln in done.stdout.splitlines() if ln.strip()]
    for i, line in enumerate(out[:-1]):
        if "Unable to get an update" in line:
            return out[i + 1]
    return lines[-1].removeprefix("Error: ") if lines else f"exit {done.returncode}"


@contextmanager
def pulled_chart(source: OciChart, *, helm: str, timeout: float = 600.0) -> Iterator[Path]:
    """`helm pull` (within `timeout` seconds) into a temporary directory; the
    unpacked chart, removed afterwards.

    `helm pull --untar` downloads into a directory of its own under $TMPDIR
    and removes it only when it returns: stopped (a signal, the timeout) it
    leaves that behind. So helm gets a TMPDIR inside ours, which goes whole.
    """
    tmp = proc.temp_dir("mfhelm-oci-")
    try:
        (tmp / "tmp").mkdir()
        (tmp / "chart").mkdir()
        cmd = [helm, "pull", source.ref, f"--version={source.version}", "--untar",
               "--destination", str(tmp / "chart")]
        if source.plain_http:
            cmd.append("--plain-http")
        pulled = proc.run(cmd, timeout=timeout, what=f"pulling {source.ref} {source.version}",
                          env={**os.environ, "TMPDIR": str(tmp / "tmp")})
        if pulled.returncode != 0:
            raise MfhelmError(f"could not pull {source.ref} version {source.version}: "
                              f"{_helm_error(pulled)}")
        found = [p.parent for p in (tmp / "chart").glob("*/Chart.yaml")]
        if len(found) != 1:
            raise MfhelmError(f"{source.ref} version {source.version} is not a Helm chart")
        yield found[0]
    finally:
        proc.remove_tree(tmp)


# ------------------------------------------------------------------- push

@dataclass(frozen=True)
class Pushed:
    ref: str
    version: str
    digest: str
    dropped: list[str]


def package(chart: Path, dest: Path, *, helm: str, drop_subcharts: bool) -> tuple[Path, list[str]]:
    """`helm package` of a copy of `chart` with its subchart archives built in
    (`helm dependency build`, which needs the chart repositories). With
    drop_subcharts, a failed fetch packages the chart without them, under the
    version <version>-nosubcharts; without it, a failed fetch is an error.
    Returns the archive and the names of the subcharts left out."""
    work = dest / "src" / chart.name
    shutil.copytree(chart, work, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    meta = yaml.safe_load((work / "Chart.yaml").read_text())
    deps = [d["name"] for d in meta.get("dependencies") or []]
    dropped: list[str] = []
    if deps:
        built = proc.run([helm, "dependency", "build", str(work)], timeout=PUSH_TIMEOUT,
                         what="helm dependency build")
        if built.returncode != 0:
            names = ", ".join(f"{d['name']} {d['version']} ({d.get('repository', '')})"
                              for d in meta["dependencies"])
            if not drop_subcharts:
                raise MfhelmError(
                    f"cannot fetch the subcharts {names}: {_helm_error(built)}. Run where "
                    "their chart repositories are reachable, or push without them "
                    f"(SUBCHARTS=drop: version {meta['version']}-{NO_SUBCHARTS}, installs only "
                    "with Argo and Airflow off)")
            dropped = deps
            del meta["dependencies"]
            meta["version"] = f"{meta['version']}-{NO_SUBCHARTS}"
            (work / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
            shutil.rmtree(work / "charts", ignore_errors=True)
    out = dest / "out"
    out.mkdir()
    packaged = proc.run([helm, "package", str(work), "--destination", str(out)],
                        timeout=PUSH_TIMEOUT, what="helm package")
    if packaged.returncode != 0:
        raise MfhelmError(f"helm package {chart}: {_helm_error(packaged)}")
    archive = out / f"{meta['name']}-{meta['version']}.tgz"
    if not archive.is_file():
        raise MfhelmError(f"helm package wrote no {archive.name}")
    return archive, dropped


def push(chart: Path, registry: str, *, helm: str, plain_http: bool = False,
         drop_subcharts: bool = False) -> Pushed:
    """Package `chart` and `helm push` it to oci://REGISTRY (host[:port][/path])."""
    target = SCHEME + registry.removeprefix(SCHEME).rstrip("/")
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    check_ref(f"{target}/{meta['name']}", "REGISTRY")
    tmp = proc.temp_dir("mfhelm-push-")
    try:
        archive, dropped = package(chart, tmp, helm=helm, drop_subcharts=drop_subcharts)
        cmd = [helm, "push", str(archive), target]
        if plain_http:
            cmd.append("--plain-http")
        pushed = proc.run(cmd, timeout=PUSH_TIMEOUT, what=f"helm push to {target}")
        if pushed.returncode != 0:
            raise MfhelmError(f"helm push to {target}: {_helm_error(pushed)}")
    finally:
        proc.remove_tree(tmp)
    # helm push reports "Pushed: REF:TAG" and "Digest: sha256:..." on stderr or stdout.
    text = pushed.stdout + pushed.stderr
    digest = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                   if ln.startswith("Digest:")), "")
    version = archive.name.removeprefix(f"{meta['name']}-").removesuffix(".tgz")
    return Pushed(f"{target}/{meta['name']}", version, digest, dropped)


def main(argv: list[str] | None = None) -> int:
    from mfhelm.helm import find_chart, helm_binary

    ap = argparse.ArgumentParser(prog="python -m mfhelm.oci",
                                 description="Package the chart and push it to an OCI registry.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("push", help="helm package + helm push")
    p.add_argument("registry", help="HOST[:PORT][/PATH]; the chart goes to oci://REGISTRY/NAME")
    p.add_argument("--chart", default=None, help="chart directory (default: the packaged one)")
    p.add_argument("--plain-http", action="store_true", help="the registry speaks plain HTTP")
    p.add_argument("--drop-subcharts", action="store_true",
                   help="if the subcharts cannot be fetched, push without them "
                        f"(version suffix -{NO_SUBCHARTS})")
    args = ap.parse_args(argv)
    try:
        if not args.registry.strip():
            raise MfhelmError("REGISTRY is empty: make chart-push REGISTRY=HOST[:PORT][/PATH]")
        pushed = push(find_chart(args.chart), args.registry, helm=helm_binary(),
                      plain_http=args.plain_http, drop_subcharts=args.drop_subcharts)
    except MfhelmError as exc:
        print(f"chart-push: error: {exc}", file=sys.stderr)
        return 1
    if pushed.dropped:
        print(f"chart-push: the subcharts {', '.join(pushed.dropped)} could not be fetched; "
              f"pushed without them as version {pushed.version} (Argo and Airflow must stay "
              "off when installing it)", file=sys.stderr)
    print(f"pushed {pushed.ref}:{pushed.version} ({pushed.digest})")
    flag = " --plain-http" if args.plain_http else ""
    print(f"install: mfhelm install --chart {pushed.ref} --version {pushed.version}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
