"""`mfhelm image build`: the flow image, built in the stack's registry by ACR's
build service (no local Docker), recorded by digest in mfhelm.toml; and the
check `mfhelm doctor` and `mfhelm verify` make that the recorded image exists.

The image (mfhelm/flowimage/Dockerfile) is a slim Debian Python of the data
scientists' minor version with Metaflow's Azure task dependencies installed
(the `flow-image` extra in pyproject.toml, read here from mfhelm's installed
metadata), `METAFLOW_SKIP_INSTALL_DEPENDENCIES` set, a non-root user, and the
user's requirements.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfhelm.errors import MfhelmError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from mfhelm.azure.registry import Registry, RunState
    from mfhelm.doctor import Check

# The minors the base image has: the `<minor>-slim-bookworm` tags of Docker's
# official python image, read from docker-library/official-images,
# library/python (commit 37079fb, 2026-08-21): 3.10 to 3.14 (3.15 only as rc).
SUPPORTED_PYTHON = ("3.10", "3.11", "3.12", "3.13", "3.14")
# Debian bookworm's glibc is 2.36: wheels for manylinux_2_36 and older install.
GLIBC = (2, 36)
REPOSITORY = "metaflow-flow"
BUILD_TIMEOUT = 3600
FLOW_EXTRA = "flow-image"
# How many of a failed build's last log lines the error repeats.
TAIL_LINES = 15


def default_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def check_python(version: str) -> str:
    if version not in SUPPORTED_PYTHON:
        raise MfhelmError(f"{version!r} is not a Python minor the base image has "
                          f"(python:<minor>-slim-bookworm: {', '.join(SUPPORTED_PYTHON)})")
    return version


def flow_requirements() -> list[str]:
    """The pinned `flow-image` extra of mfhelm's metadata (pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        reqs = requires("mfhelm") or []
    except PackageNotFoundError:
        raise MfhelmError("mfhelm's package metadata is missing; reinstall mfhelm") from None
    marker = re.compile(r";\s*extra\s*==\s*['\"]" + re.escape(FLOW_EXTRA) + r"['\"]\s*$")
    found = [marker.split(r)[0].strip() for r in reqs if marker.search(r)]
    if not found:
        raise MfhelmError(f"mfhelm's metadata has no {FLOW_EXTRA!r} extra; reinstall mfhelm")
    return sorted(found)


def dockerfile() -> str:
    return resources.files("mfhelm.flowimage").joinpath("Dockerfile").read_text("utf-8")


def read_requirements(path: str | os.PathLike[str] | None) -> str:
    if path is None:
        return ""
    from mfhelm import userfiles

    text = userfiles.read_text(path, "--requirements", limit=userfiles.MIB)
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        # The build context holds the two requirement files and the Dockerfile
        # only: a file that includes or points at local paths cannot resolve there.
        if re.match(r"(-r|--requirement|-c|--constraint|-e|--editable)\b", stripped) \
                or re.match(r"(\.{0,2}/|file:)", stripped):
            raise MfhelmError(f"--requirements {os.fspath(path)}: line {n} ({stripped}) refers "
                              "to a local file, which the build in the registry cannot see; "
                              "list packages from an index instead")
    return text


def _platforms() -> list[str]:
    major, minor = GLIBC
    return [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 16, -1)] + \
        ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]


# pip's ERROR lines, most telling first (pip 26 also reports yanked versions it
# skipped, and repeats a missing version as "Could not find a version").
_PIP_CAUSES = ("No matching distribution found", "Cannot install", "Could not find a version",
               "ResolutionImpossible")


def check_resolves(user_requirements: str, python: str, *, timeout: float = 600) -> None:
    """pip resolves the image's requirements (the pinned set and the user's
    together, as the Dockerfile installs them) for the image's Python and
    platform, from the index, without installing anything: a name or version
    that does not exist, or a conflict, is refused before anything is uploaded.
    Wheels only (pip resolves for another platform no other way): a package
    published only as a source archive is refused too."""
    from mfhelm import proc

    with tempfile.TemporaryDirectory(prefix="mfhelm-image-") as tmp:
        flow = Path(tmp) / "flow-requirements.txt"
        user = Path(tmp) / "user-requirements.txt"
        flow.write_text("\n".join(flow_requirements()) + "\n")
        user.write_text(user_requirements)
        argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                "--quiet", "--disable-pip-version-check", "--no-input",
                "--only-binary=:all:", "--python-version", python,
                "--implementation", "cp", "--abi", f"cp{python.replace('.', '')}",
                "--abi", "abi3", "--abi", "none", "--target", str(Path(tmp) / "target")]
        for platform in _platforms():
            argv += ["--platform", platform]
        argv += ["-r", str(flow), "-r", str(user)]
        done = proc.run(argv, timeout=timeout, what="pip (checking --requirements)")
    if done.returncode == 0:
        return
    out = (done.stderr or "") + (done.stdout or "")
    if "No module named pip" in out:
        raise MfhelmError("pip is not installed in mfhelm's environment; it checks "
                          "--requirements before the build (install pip there)")
    errors = [ln.strip().removeprefix("ERROR: ") for ln in out.splitlines()
              if ln.startswith("ERROR:")]
    cause = next((e for prefix in _PIP_CAUSES for e in errors if e.startswith(prefix)),
                 next((e for e in errors if not e.startswith("Ignored the following")),
                      (out.strip().splitlines() or ["pip failed"])[-1]))
    raise MfhelmError(f"--requirements does not resolve for Python {python} on "
                      f"linux/amd64: {cause}")


def build_context(python: str, user_requirements: str) -> bytes:
    """The gzipped tarball ACR builds: the Dockerfile and both requirement files."""
    files = {
        "Dockerfile": dockerfile(),
        "flow-requirements.txt": "\n".join(flow_requirements()) + "\n",
        "user-requirements.txt": user_requirements or "# no user requirements\n",
    }
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def registry_of(outputs: dict[str, Any], subscription_id: str) -> Registry:
    from mfhelm.azure.outputs import is_host
    from mfhelm.azure.registry import Registry

    name = outputs.get("registryName") or ""
    server = outputs.get("registryLoginServer") or ""
    if not name or not server:
        raise MfhelmError("the stack has no container registry (its deployment has no "
                          "registryName output): set [registry] enabled = true in mfhelm.toml "
                          "and run `mfhelm deploy`, then build again")
    if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z0-9]{5,50}", name) \
            or not isinstance(server, str) or not is_host(server.split(":")[0]):
        raise MfhelmError(f"deployment outputs registryName/registryLoginServer are not a "
                          f"registry ({name!r}, {server!r}); re-run `mfhelm deploy`")
    return Registry(subscription_id, str(outputs["resourceGroupName"]), name, server.lower())


# --- recording the image in mfhelm.toml -------------------------------------------------

_TABLE_RE = re.compile(r"\A\s*\[\s*image\s*\]\s*(#.*)?\s*\Z", re.ASCII)
_ANY_TABLE_RE = re.compile(r"^\s*\[", re.ASCII)
_KEY_RE = re.compile(r"\A(\s*reference\s*=\s*)(\"[^\"\\\n]*\"|'[^'\n]*')(\s*(#.*)?)\Z", re.ASCII)


def with_reference(text: str, reference: str) -> str:
    """`text` (mfhelm.toml) with [image] reference set, every other byte kept:
    the key's line is rewritten in place, or added under [image], or an
    [image] table is appended. The result is checked to parse to the same
    document but for that one value; anything this cannot edit that way
    (an inline or dotted `image` key, a multi-line value) is refused."""
    import tomllib

    before = tomllib.loads(text)
    lines = text.splitlines(keepends=True)
    header = next((i for i, ln in enumerate(lines) if _TABLE_RE.match(ln)), None)
    new = f'reference = "{reference}"'
    if header is None:
        if "image" in before:
            raise _cannot_edit()
        sep = "" if not text or text.endswith("\n") else "\n"
        out = f"{text}{sep}\n[image]\n{new}\n"
    else:
        end = next((i for i in range(header + 1, len(lines))
                    if _ANY_TABLE_RE.match(lines[i])), len(lines))
        key = next((i for i in range(header + 1, end)
                    if re.match(r"^\s*reference\s*=", lines[i])), None)
        if key is None:
            newline = "\n" if lines[header].endswith("\n") else "\n"
            prefix = "" if lines[header].endswith("\n") else "\n"
            lines.insert(header + 1, f"{prefix}{new}{newline}")
        else:
            m = _KEY_RE.match(lines[key].rstrip("\r\n"))
            if m is None:
                raise _cannot_edit()
            ending = lines[key][len(lines[key].rstrip("\r\n")):]
            lines[key] = f'{m[1]}"{reference}"{m[3]}{ending}'
        out = "".join(lines)
    try:
        after = tomllib.loads(out)
    except tomllib.TOMLDecodeError:
        raise _cannot_edit() from None
    expected = dict(before)
    expected["image"] = {**before.get("image", {}), "reference": reference}
    if after != expected:
        raise _cannot_edit()
    return out


def _cannot_edit() -> MfhelmError:
    return MfhelmError("mfhelm.toml's [image] is written in a form mfhelm does not edit; "
                       "make it a plain `[image]` table with `reference = \"...\"`")


def record_reference(settings_file: str | os.PathLike[str] | None, reference: str) -> Path:
    """Set [image] reference in the settings file, atomically, comments kept."""
    from mfhelm import settings as settings_mod
    from mfhelm import userfiles

    path = settings_mod.settings_path(settings_file)
    text = userfiles.read_text(path)
    out = with_reference(text, reference)
    import tomllib

    settings_mod.parse(tomllib.loads(out), str(path))
    userfiles.write_text(path, out)
    return path


# --- the build --------------------------------------------------------------------------

@dataclass(frozen=True)
class Built:
    reference: str
    run_id: str
    settings_file: Path


def image_tag(python: str) -> str:
    return f"{REPOSITORY}:py{python}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"


def _lines(data: bytes, pending: list[bytes], echo: Callable[[str], None],
           tail: list[str]) -> None:
    chunk = b"".join(pending) + data
    pending.clear()
    *complete, rest = chunk.split(b"\n")
    if rest:
        pending.append(rest)
    for raw in complete:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        tail.append(line)
        del tail[:-TAIL_LINES]
        echo(line)


def build(settings_file: str | os.PathLike[str] | None, registry: Registry, *,
          python: str, user_requirements: str, credential: TokenCredential,
          echo: Callable[[str], None], progress: Callable[[str], None],
          base_url: str | None = None, poll: float = 2.0) -> Built:
    """Upload the context, build it in ACR with its log streamed to `echo`, and
    record the pushed image by digest in the settings file."""
    from mfhelm.azure import registry as acr

    context = build_context(python, user_requirements)
    progress(f"uploading the build context to registry {registry.name}")
    source = acr.upload_source(registry, context, credential=credential, base_url=base_url)
    tag = image_tag(python)
    progress(f"building {registry.login_server}/{tag} in ACR")
    run_id = acr.schedule_build(registry, source, image=tag, python=python,
                                timeout=BUILD_TIMEOUT, credential=credential,
                                base_url=base_url)
    pending: list[bytes] = []
    tail: list[str] = []
    state = acr.follow(registry, run_id, credential=credential, poll=poll,
                       timeout=BUILD_TIMEOUT + 300, base_url=base_url,
                       on_log=lambda data: _lines(data, pending, echo, tail))
    if pending:
        _lines(b"\n", pending, echo, tail)
    if state.status != "Succeeded":
        raise MfhelmError(_failure(registry, state, tail))
    reference = _reference(registry, state, tag)
    path = record_reference(settings_file, reference)
    return Built(reference, run_id, path)


def _failure(registry: Registry, state: RunState, tail: list[str]) -> str:
    why = f": {state.error}" if state.error else ""
    last = " | ".join(ln.strip() for ln in tail if ln.strip())
    return (f"build run {state.run_id} in registry {registry.name} {state.status.lower()}"
            f"{why}; last log lines: {last or '(none)'}")


def _reference(registry: Registry, state: RunState, tag: str) -> str:
    from mfhelm.settings import IMAGE_REFERENCE_RE

    repository = tag.split(":")[0]
    for host, repo, digest in state.images:
        if repo == repository and digest:
            ref = f"{(host or registry.login_server).lower()}/{repo}@{digest}"
            if IMAGE_REFERENCE_RE.fullmatch(ref):
                return ref
    raise MfhelmError(f"build run {state.run_id} succeeded but reported no digest for "
                      f"{repository}; see `az acr task logs -r {registry.name} --run-id "
                      f"{state.run_id}`")


# --- does the configured image exist ----------------------------------------------------

FLOW_IMAGE_CHECK = "flow image"


def image_check(reference: str, credential: TokenCredential) -> Check:
    """Whether [image] reference names an image its registry holds. An empty
    reference informs (tasks pip-install their dependencies at start)."""
    from mfhelm.doctor import Check

    if not reference:
        return Check(FLOW_IMAGE_CHECK, True,
                     "none set: every task pip-installs Metaflow's Azure dependencies at "
                     "start", "mfhelm image build, then mfhelm config")
    host, _, rest = reference.partition("/")
    repository, _, digest = rest.partition("@")
    from mfhelm.azure.registry import manifest_exists

    fix = "mfhelm image build (it records the new image), then mfhelm config"
    try:
        found = manifest_exists(host, repository, digest, credential=credential)
    except MfhelmError as exc:
        return Check(FLOW_IMAGE_CHECK, False, str(exc), "fix the cause above and check again")
    if not found:
        return Check(FLOW_IMAGE_CHECK, False,
                     f"{reference} is not in the registry (deleted, or another registry's): "
                     "task pods cannot start from it", fix)
    return Check(FLOW_IMAGE_CHECK, True, f"{repository}@{digest[:19]}... in {host}")
