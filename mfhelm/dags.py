"""`mfhelm dag-push`: validate a DAG file and copy it into Airflow's DAG folder.

The copy goes through the Kubernetes exec API as a tar stream (no `kubectl
cp`): the file lands under a temporary name in the persistent DAG volume,
the scheduler's own Python loads it there with Airflow's DagBag (the
Airflow, providers and airflow_local_settings the DAG will run with), and
only if that reports no import error and at least one DAG is it renamed into
place (atomic on one filesystem); its checksum is then read back and
compared.
"""

from __future__ import annotations

import ast
import hashlib
import io
import re
import shlex
import tarfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfhelm import userfiles
from mfhelm.errors import MfhelmError

# A plain file name in the DAG folder: never a path (no '/', no '..'), never
# hidden or option-like, always *.py (the only files Airflow loads). At most
# 100 characters: the name travels in a ustar tar header, whose name field
# holds 100 bytes (a plain name cannot use the prefix field), and is checked
# before any cluster call. (Airflow 2.10's 250, airflow.models.base.ID_LEN,
# bounds DAG ids; it stores the file's path in 2000.)
MAX_DAG_NAME = 100
DAG_NAME_RE = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_DAG_NAME - 4}}}\.py", re.ASCII)
DAG_NAME_RULE = ("a DAG file name is letters, digits, '_', '-' and '.', starts with a letter, "
                 f"digit or '_', has no '..', ends in .py and has at most {MAX_DAG_NAME} "
                 "characters")
# Airflow parses every DAG file in its scheduler loop; Metaflow's generated
# ones are tens of KiB. The bound is checked before a byte is read.
MAX_DAG_BYTES = 1024 * 1024  # the dag-push help in cli.py says "1 MiB"
SCHEDULER_SELECTOR = "component=scheduler,release={release}"
DEFAULT_DAG_CLAIM = "metaflow-airflow-dags"


def validate_dag_file(path: str | Path) -> bytes:
    """The file's bytes, if it is a Python file that compiles and defines a DAG."""
    p = Path(path)
    data = userfiles.read_bytes(p, limit=MAX_DAG_BYTES)
    if p.suffix != ".py":
        raise MfhelmError(f"{p}: not a Python file (Airflow loads *.py from its DAG folder)")
    try:
        # Compile warnings (SyntaxWarning for "\d" in a string, `is` with a
        # literal) are Airflow's to show when it loads the file; printed here
        # they would come before mfhelm's own line.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(data, filename=str(p))
            compile(tree, str(p), "exec")
    except SyntaxError as exc:
        where = f"{p}:{exc.lineno}" if exc.lineno else str(p)
        raise MfhelmError(f"{where}: not valid Python: {exc.msg}") from None
    except ValueError as exc:  # null bytes and the like
        raise MfhelmError(f"{p}: not valid Python source ({exc})") from None
    except (RecursionError, MemoryError):
        raise MfhelmError(f"{p}: nested too deeply to compile") from None
    if not defines_dag(tree):
        raise MfhelmError(
            f"{p}: defines no Airflow DAG (no DAG imported from airflow); make one with "
            "`python flow.py airflow create my-dag.py`"
        )
    return data


def defines_dag(tree: ast.AST) -> bool:
    """True if the module imports DAG (or the @dag decorator) from airflow and uses it,
    the shape of every DAG file, Metaflow's generated ones included."""
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "airflow":
            for alias in node.names:
                if alias.name in ("DAG", "dag"):
                    imported.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "airflow":
                    imported.add(alias.asname or alias.name.split(".")[0])
    if not imported:
        return False
    for node in ast.walk(tree):
        target = node.func if isinstance(node, ast.Call) else node
        if isinstance(target, ast.Name) and target.id in imported:
            return True
        if isinstance(target, ast.Attribute) and target.attr in ("DAG", "dag"):
            return True
    return False


def check_dag_name(name: str, option: str) -> str:
    """A DAG file name given on the command line, as it is: never reduced to
    a base name, so `../x` or `/etc/passwd.py` cannot name another file."""
    if not DAG_NAME_RE.fullmatch(name) or ".." in name:
        raise MfhelmError(f"{option} {name!r}: not a plain DAG file name; {DAG_NAME_RULE}")
    return name


def dag_name(path: str | Path, name: str | None) -> str:
    """The name the DAG gets in the folder: `name` if given, else the file's own."""
    if name is not None:
        return check_dag_name(name, "--name")
    base = Path(path).name
    if not DAG_NAME_RE.fullmatch(base) or ".." in base:
        raise MfhelmError(f"{base!r} is not usable as a DAG file name ({DAG_NAME_RULE}); "
                          "choose one with --name NAME.py")
    return base


def pack(name: str, data: bytes) -> bytes:
    """A tar archive holding one file, mode 0644, owned by nobody in particular."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# Run by the scheduler container's `python` on the unpacked file before it
# goes live: Airflow's own parser, as the scheduler's DAG processor runs it.
# One line per problem on stderr; exit 1 if the file has an import error or
# defines no DAG.
AIRFLOW_CHECK = """\
import sys
from airflow.models.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1], include_examples=False, safe_mode=False)
for err in bag.import_errors.values():
    lines = [x for x in str(err).strip().splitlines() if x.strip()]
    print(lines[-1] if lines else "import error", file=sys.stderr)
if not bag.import_errors and not bag.dags:
    print("Airflow found no DAG in it", file=sys.stderr)
sys.exit(1 if bag.import_errors or not bag.dags else 0)
"""
# Exit codes of the remote script for a file Airflow refuses, and for a pod
# without Python (not an Airflow image).
REFUSED_EXIT, NO_PYTHON_EXIT = 4, 5


def copy_script(folder: str, name: str, size: int) -> list[str]:
    """The remote command: read exactly `size` bytes of tar, unpack under a
    temporary name, have Airflow load it there, rename into place, print the
    checksum of the result. A refused file is removed again."""
    tmp = f".{name}.mfhelm-{uuid.uuid4().hex[:8]}"
    q = shlex.quote
    staged = q(tmp + "/" + name)
    script = (
        f"set -e; cd {q(folder)}; "
        f"mkdir -p {q(tmp)}; "
        f"head -c {size} | tar -xf - -C {q(tmp)} --no-same-owner; "
        f"command -v python >/dev/null || {{ rm -rf {q(tmp)}; exit {NO_PYTHON_EXIT}; }}; "
        f"python -c {q(AIRFLOW_CHECK)} {staged} >/dev/null "
        f"|| {{ rm -rf {q(tmp)}; exit {REFUSED_EXIT}; }}; "
        f"mv -f {staged} {q(name)}; rmdir {q(tmp)}; "
        f"sha256sum {q(name)}"
    )
    return ["sh", "-c", script]


@dataclass(frozen=True)
class DagTarget:
    pod: str
    container: str
    folder: str


def find_dag_target(api: Any, namespace: str, release: str,
                    claim: str = DEFAULT_DAG_CLAIM) -> DagTarget:
    """The ready Airflow pod that mounts the DAG volume, and where."""
    from mfhelm import kube

    pods = kube.list_pods(api, namespace, SCHEDULER_SELECTOR.format(release=release))
    if not pods:
        raise MfhelmError(
            f"Airflow is not deployed: no scheduler pod for release {release!r} in namespace "
            f"{namespace!r}; set deploy_airflow = true in mfhelm.toml and re-run mfhelm install"
        )
    ready = [p for p in pods if kube.pod_ready(p)]
    if not ready:
        states = ", ".join(f"{p.metadata.name} {p.status.phase if p.status else 'Unknown'}"
                           for p in pods)
        raise MfhelmError(
            f"the Airflow scheduler pod is not ready ({states}); check `mfhelm status`"
        )
    pod = sorted(ready, key=lambda p: p.metadata.name)[0]
    volumes = {v.name for v in (pod.spec.volumes or [])
               if v.persistent_volume_claim and v.persistent_volume_claim.claim_name == claim}
    if not volumes:
        raise MfhelmError(f"pod {pod.metadata.name} does not mount the DAG volume {claim!r}")
    for container in pod.spec.containers:
        for mount in container.volume_mounts or []:
            if mount.name in volumes and not mount.read_only:
                return DagTarget(pod.metadata.name, container.name, mount.mount_path)
    raise MfhelmError(f"no container of {pod.metadata.name} mounts {claim!r} writable")


def push(api: Any, namespace: str, release: str, path: str | Path, name: str | None = None,
         claim: str = DEFAULT_DAG_CLAIM) -> tuple[DagTarget, str]:
    """Validate, copy and verify; returns the target and the DAG's file name."""
    from mfhelm import kube

    data = validate_dag_file(path)
    final = dag_name(path, name)
    target = find_dag_target(api, namespace, release, claim)
    archive = pack(final, data)
    result = kube.exec_in_pod(api, namespace, target.pod, target.container,
                              copy_script(target.folder, final, len(archive)), stdin=archive)
    detail = [x for x in result.stderr.decode(errors="replace").strip().splitlines() if x]
    if result.returncode == REFUSED_EXIT:
        raise MfhelmError(
            f"{path}: Airflow in {target.pod} cannot load it, not pushed: "
            + (detail[-1] if detail else "import error")
        )
    if result.returncode == NO_PYTHON_EXIT:
        raise MfhelmError(f"{target.pod}/{target.container} has no python to check {final} "
                          "with; is it an Airflow scheduler? Not pushed")
    if result.returncode != 0:
        raise MfhelmError(
            f"copying {final} into {target.pod}:{target.folder} failed: "
            + (detail[-1] if detail else f"exit {result.returncode}")
        )
    remote = result.stdout.decode(errors="replace").split()
    expected = hashlib.sha256(data).hexdigest()
    if not remote or remote[0] != expected:
        raise MfhelmError(f"{final} in {target.pod} does not match the local file after copying")
    return target, final


def list_dags(api: Any, namespace: str, release: str,
              claim: str = DEFAULT_DAG_CLAIM) -> tuple[DagTarget, list[str]]:
    from mfhelm import kube

    target = find_dag_target(api, namespace, release, claim)
    result = kube.exec_in_pod(api, namespace, target.pod, target.container,
                              ["sh", "-c", f"cd {shlex.quote(target.folder)} && ls -1A"])
    if result.returncode != 0:
        raise MfhelmError(f"listing {target.folder} in {target.pod} failed: "
                          + result.stderr.decode(errors="replace").strip())
    names = [n for n in result.stdout.decode().splitlines() if n.endswith(".py")
             and not n.startswith(".")]
    return target, sorted(names)


def remove_dag(api: Any, namespace: str, release: str, name: str,
               claim: str = DEFAULT_DAG_CLAIM) -> DagTarget:
    from mfhelm import kube

    final = check_dag_name(name, "--remove")
    target = find_dag_target(api, namespace, release, claim)
    q = shlex.quote
    script = (f"cd {q(target.folder)} && if [ -e {q(final)} ]; then rm -f -- {q(final)}; "
              f"else echo 'absent' >&2; exit 3; fi")
    result = kube.exec_in_pod(api, namespace, target.pod, target.container, ["sh", "-c", script])
    if result.returncode == 3:
        raise MfhelmError(f"{final} is not in the DAG folder (see `mfhelm dag-push --list`)")
    if result.returncode != 0:
        raise MfhelmError(f"removing {final} failed: " + result.stderr.decode(errors="replace"))
    return target
