#!/usr/bin/env python3
"""Install the pinned tools from tools.toml into a cache outside the repo.

Each tool lands in ``$MFHELM_CACHE/tools/<name>-<version>/bin`` (default
cache: ``~/.cache/mfhelm``) and is linked into a bin directory, usually the
project's ``.venv/bin``. A tool whose versioned directory already holds all
of its binaries is not rebuilt, so repeat runs cost nothing; a missing or
partial one is rebuilt from scratch; a marker written last tells a finished
build from an interrupted one.

System packages in the manifest's ``[debian]`` section (Chromium and its
WebDriver for the browser tests) are installed with apt-get when missing and
this runs as root; otherwise a note names them and the tests that need them
skip. ``--only debian`` installs just those.

Usage:
    install.py [--bin-dir DIR] [--only NAME ...]   install and link
    install.py --version-of NAME                  print a pinned version
    install.py --path-of BINARY                   print a binary's cached path

Only the standard library is used: this runs before the venv exists.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "tools.toml"


def cache_dir() -> Path:
    return Path(os.environ.get("MFHELM_CACHE", Path.home() / ".cache" / "mfhelm"))


def load_manifest() -> dict:
    with MANIFEST.open("rb") as fh:
        return tomllib.load(fh)


def tool_entries(manifest: dict) -> dict[str, tuple[str, dict]]:
    """name -> (kind, entry) for every installable tool in the manifest."""
    entries: dict[str, tuple[str, dict]] = {}
    for kind in ("go", "python", "npm", "gobuild"):
        for name, entry in manifest.get(kind, {}).items():
            entries[name] = (kind, entry)
    return entries


def _wrapper_sources(name: str) -> list[Path]:
    """A gobuild wrapper's own Go files and module files, if it has Go files
    (the OIDC server's main.go); the others only pin upstream modules."""
    src = ROOT / "tests" / "tools" / "gobuild" / name
    if not any(src.glob("*.go")):
        return []
    return sorted([*src.glob("*.go"), src / "go.mod", src / "go.sum"])


def tool_home(name: str, entry: dict) -> Path:
    version = entry["version"]
    if entry.get("with"):  # a changed companion pin is a different build
        digest = hashlib.sha256("\n".join(sorted(entry["with"])).encode()).hexdigest()[:10]
        version = f"{version}-{digest}"
    if entry.get("links") or entry.get("empty_files"):
        # Built from a patched copy of the module: what is patched and which
        # commands are built from it are part of the build, so a changed set
        # of binaries gets a fresh home rather than a warm one that lacks a
        # binary (or holds one put there by hand).
        recipe = json.dumps({k: entry.get(k) for k in
                             ("packages", "binaries", "links", "empty_files", "files")},
                            sort_keys=True)
        version = f"{version}-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"
    sources = _wrapper_sources(name)
    if sources:  # so is a changed wrapper source
        h = hashlib.sha256()
        for path in sources:
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        version = f"{version}-{h.hexdigest()[:10]}"
    return cache_dir() / "tools" / f"{name}-{version}"


def _run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kw)


def _go_env() -> dict[str, str]:
    env = dict(os.environ, CGO_ENABLED="0")
    env.setdefault("GOFLAGS", "-mod=mod")
    return env


def _ldflags(entry: dict) -> str:
    """The entry's ldflags with {version}, {major} and {minor} filled in.

    Kubernetes reports gitMajor/gitMinor separately in /version, and deriving
    them here keeps the version written once in tools.toml.
    """
    version = entry["version"]
    parts = version.lstrip("v").split(".")
    major, minor = (parts + ["", ""])[:2]
    return entry.get("ldflags", "").format(version=version, major=major, minor=minor,
                                           commit=entry.get("commit", ""))


def build_go(name: str, entry: dict, dest: Path) -> None:
    """`go install module/pkg@version` with the version stamped by ldflags
    (and the entry's gcflags, if any)."""
    bindir = dest / "bin"
    bindir.mkdir()
    ldflags = _ldflags(entry)
    cmd = ["go", "install", "-trimpath"]
    if ldflags:
        cmd += ["-ldflags", ldflags]
    if entry.get("gcflags"):
        cmd += ["-gcflags", entry["gcflags"]]
    packages = entry.get("packages") or [entry["package"]]
    cmd += [f"{pkg}@{entry['version']}" for pkg in packages]
    _run(cmd, env=dict(_go_env(), GOBIN=str(bindir)), cwd=tempfile.gettempdir())


def build_gobuild(name: str, entry: dict, dest: Path) -> None:
    """Build binaries from a wrapper module: tests/tools/gobuild/<name>/go.mod.

    Used where `go install pkg@version` cannot work, e.g. k8s.io/kubernetes,
    whose go.mod replaces its staging modules with local paths. The n-th
    package is written as the n-th binary, so a package whose path does not
    end in the command's name (go.etcd.io/etcd/server/v3) still gets one.
    """
    src = ROOT / "tests" / "tools" / "gobuild" / name
    bindir = dest / "bin"
    bindir.mkdir()
    ldflags = _ldflags(entry)
    if len(entry["packages"]) != len(entry["binaries"]):
        raise RuntimeError(f"{name}: packages and binaries must pair up one to one")
    with tempfile.TemporaryDirectory() as work:
        shutil.copytree(src, work, dirs_exist_ok=True)
        env = _go_env()
        if entry.get("empty_files") or entry.get("links"):
            _use_writable_module(entry, env, work)
        for pkg, binary in zip(entry["packages"], entry["binaries"], strict=True):
            out = bindir / binary
            cmd = ["go", "build", "-trimpath", "-o", str(out)]
            if ldflags:
                cmd += ["-ldflags", ldflags]
            _run([*cmd, pkg], env=env, cwd=work)
        _copy_module_files(entry, dest, env, work)


def _use_writable_module(entry: dict, env: dict[str, str], work: str) -> None:
    """Build ``module`` from a writable copy of its source with the entry's
    ``empty_files`` and ``links`` added, through a replace directive in the
    wrapper copy. The copy is the exact module version the wrapper's go.sum
    pins.

    ``empty_files``: files a release build generates before compiling, which
    the module zip therefore lacks: Argo's `argo` CLI embeds ``ui/dist/app``
    (go:embed), and argo's Makefile touches ``ui/dist/app/index.html`` for a
    build without the UI. ``links``: symbolic links of the repository (path
    -> target, relative to the link's directory, as git stores it), which
    module zips drop although the sources need them to compile: Argo's
    executor has workflow/executor/os-specific/signal_linux.go (v3.6.10;
    osspecific/ in v4) only as a link to signal_darwin.go (git ls-tree: mode
    120000), and without it `Setpgid` is undefined on Linux. Each becomes a
    copy of its target.
    """
    module, version = entry["module"], entry["version"]
    downloaded = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        env=env, cwd=work, check=True, capture_output=True, text=True,
    ).stdout
    copy = Path(work) / "_module"
    shutil.copytree(json.loads(downloaded)["Dir"], copy, copy_function=shutil.copyfile)
    for dirpath, _dirs, _files in os.walk(copy):  # module-cache directories are read-only
        os.chmod(dirpath, 0o755)
    for rel in entry.get("empty_files", []):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).touch()
    for rel, target in entry.get("links", {}).items():
        shutil.copyfile((copy / rel).parent / target, copy / rel)
    _run(["go", "mod", "edit", f"-replace={module}=./_module"], env=env, cwd=work)


def _copy_module_files(entry: dict, dest: Path, env: dict[str, str], work: str) -> None:
    """Copy files out of the built module version into the tool's home.

    ``files`` maps a directory under ``dest`` to a glob inside ``module``'s
    source, e.g. Argo's CRDs: they must come from the same release as the
    controller. The module is in the module cache once the build is done.
    """
    if not entry.get("files"):
        return
    found = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", entry["module"]],
        env=env, cwd=work, check=True, capture_output=True, text=True,
    ).stdout.strip()
    if not found:
        raise RuntimeError(f"{entry['module']} is not in the module cache after the build")
    for target, pattern in entry["files"].items():
        matches = sorted(Path(found).glob(pattern))
        if not matches:
            raise RuntimeError(f"no {pattern} in {entry['module']} {entry['version']}")
        (dest / target).mkdir(parents=True)
        for src in matches:
            # copyfile, not copy2: module-cache files are read-only, and a
            # later rebuild must be able to remove the copies.
            shutil.copyfile(src, dest / target / src.name)


def build_python(name: str, entry: dict, dest: Path) -> None:
    """An isolated virtualenv holding one pinned Python tool (and the pinned
    packages listed in its `with`)."""
    venv = dest / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    reqs = [f"{entry['package']}=={entry['version']}", *entry.get("with", [])]
    uv = shutil.which("uv") or shutil.which("uv", path=str(ROOT / ".venv" / "bin"))
    if uv:  # resolves Airflow's tree in seconds where pip takes minutes
        _run([uv, "pip", "install", "--quiet", "--python", str(python), *reqs])
    else:
        _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              *reqs])
    (dest / "bin").mkdir()
    for binary in entry["binaries"]:
        (dest / "bin" / binary).symlink_to(venv / "bin" / binary)


def build_npm(name: str, entry: dict, dest: Path) -> None:
    """A pinned npm package installed into its own prefix."""
    _run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(dest),
          f"{entry['package']}@{entry['version']}"])
    (dest / "bin").mkdir()
    for binary in entry["binaries"]:
        (dest / "bin" / binary).symlink_to(dest / "node_modules" / ".bin" / binary)


BUILDERS: dict[str, Callable[[str, dict, Path], None]] = {
    "go": build_go,
    "gobuild": build_gobuild,
    "python": build_python,
    "npm": build_npm,
}


def is_complete(home: Path, entry: dict) -> bool:
    """A finished build of exactly this entry's binaries.

    The marker is written last, so an interrupted build is never mistaken for
    a finished one. It names the binaries built (markers from before that
    hold only the version); a build of another set of binaries, or one that
    lacks a binary it should have, is not complete.
    """
    marker = home / ".complete"
    if not marker.exists():
        return False
    lines = marker.read_text().splitlines()
    if len(lines) > 1 and sorted(lines[1].split()) != sorted(entry["binaries"]):
        return False
    return all((home / "bin" / b).exists() for b in entry["binaries"])


def install(name: str, kind: str, entry: dict) -> Path:
    home = tool_home(name, entry)
    if is_complete(home, entry):
        return home
    # One builder per tool at a time: `make test` and a pytest session (the
    # cluster fixture builds on demand) may both ask for the same missing tool.
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f".{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(home, entry):  # the other builder finished it meanwhile
            return home
        return _build(name, kind, entry, home)


def _build(name: str, kind: str, entry: dict, home: Path) -> Path:
    print(f"mfhelm tools: building {name} {entry['version']} (cached afterwards)",
          file=sys.stderr, flush=True)
    # Built in place: virtualenvs and npm prefixes hold absolute paths.
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    try:
        BUILDERS[kind](name, entry, home)
        missing = [b for b in entry["binaries"] if not (home / "bin" / b).exists()]
        if missing:
            raise RuntimeError(f"build finished but {', '.join(missing)} missing")
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    (home / ".complete").write_text(f"{entry['version']}\n{' '.join(entry['binaries'])}\n")
    return home


def link(home: Path, entry: dict, bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for binary in entry["binaries"]:
        dst = bin_dir / binary
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(home / "bin" / binary)


DEBIAN = "debian"


def missing_debian_packages(manifest: dict) -> list[str]:
    """The [debian] packages whose binaries are not on this machine."""
    section = manifest.get(DEBIAN, {})
    return [pkg for pkg in section.get("packages", [])
            if not Path(section["binaries"][pkg]).exists()]


def install_debian(manifest: dict) -> int:
    """apt-get install the missing [debian] packages when root (0), or say
    which are missing and what skips without them (also 0: a developer
    without root still gets every other tool); 1 when apt-get fails."""
    missing = missing_debian_packages(manifest)
    if not missing:
        return 0
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"mfhelm tools: {', '.join(missing)} not installed (needs root: apt-get install "
              f"{' '.join(missing)}); the browser tests skip without them", file=sys.stderr)
        return 0
    print(f"mfhelm tools: installing {', '.join(missing)} with apt-get", file=sys.stderr,
          flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        _run(["apt-get", "update", "-qq"], env=env)
        _run(["apt-get", "install", "-y", "-qq", *missing], env=env, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as exc:
        print(f"mfhelm tools: apt-get failed: {exc}", file=sys.stderr)
        return 1
    still = missing_debian_packages(manifest)
    if still:
        print(f"mfhelm tools: apt-get installed {', '.join(still)} but its binaries are not "
              f"where tools.toml says", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin-dir", type=Path, default=ROOT / ".venv" / "bin")
    ap.add_argument("--only", nargs="*", default=None, help="install only these tools")
    ap.add_argument("--version-of", metavar="NAME")
    ap.add_argument("--path-of", metavar="BINARY")
    args = ap.parse_args(argv)

    manifest = load_manifest()
    entries = tool_entries(manifest)
    if args.version_of:
        section = manifest.get(args.version_of) or entries.get(args.version_of, (None, {}))[1]
        if "version" not in section:
            print(f"no pinned version for {args.version_of!r} in tools.toml", file=sys.stderr)
            return 2
        print(section["version"])
        return 0
    if args.path_of:
        for name, (_kind, entry) in entries.items():
            if args.path_of in entry["binaries"]:
                print(tool_home(name, entry) / "bin" / args.path_of)
                return 0
        print(f"no tool in tools.toml provides {args.path_of!r}", file=sys.stderr)
        return 2

    wanted = args.only if args.only is not None else [*entries, DEBIAN]
    unknown = sorted(set(wanted) - set(entries) - {DEBIAN})
    if unknown:
        print(f"unknown tools: {', '.join(unknown)}", file=sys.stderr)
        return 2
    for name in wanted:
        if name == DEBIAN:
            continue
        kind, entry = entries[name]
        try:
            home = install(name, kind, entry)
        except (subprocess.CalledProcessError, RuntimeError) as exc:
            print(f"mfhelm tools: building {name} failed: {exc}", file=sys.stderr)
            return 1
        link(home, entry, args.bin_dir)
    if DEBIAN in wanted:
        return install_debian(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
