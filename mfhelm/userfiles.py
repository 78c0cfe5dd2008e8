"""Files the user names, read and written with one clear line for every way
they can fail.

Settings, deployment outputs, kubeconfigs, values files, DAG files, `-o`
targets and the Metaflow config all go through here, so a directory, a FIFO,
a symlink loop, bytes that are not UTF-8, a missing or read-only directory,
a file far too large or a document nested too deeply is one MfhelmError that
names the path, never a traceback, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mfhelm.errors import MfhelmError

PathArg = str | os.PathLike[str]

MIB = 1024 * 1024
# Settings, outputs, kubeconfigs and values files are kilobytes: the bound
# keeps a wrong path (a disk image, a log) from being read into memory.
CONFIG_LIMIT = 8 * MIB

_REASONS = {
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a directory, not a regular file",
    errno.ENOTDIR: "a parent of it is not a directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.ELOOP: "symlink loop (too many levels of symbolic links)",
    errno.EROFS: "read-only file system",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}


def describe(exc: OSError) -> str:
    """A short, lowercase reason for an OSError, without the errno noise."""
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    return (exc.strerror or str(exc)).lower()


def label(path: PathArg, what: str = "") -> str:
    return f"{what} {os.fspath(path)}" if what else os.fspath(path)


def os_error(path: PathArg, exc: OSError, what: str = "", hint: str = "") -> MfhelmError:
    """The MfhelmError for an OSError on `path`, with an optional next step."""
    reason = describe(exc)
    if hint:
        reason = f"{reason}; {hint}"
    return MfhelmError(f"{label(path, what)}: {reason}")


def _human(size: int) -> str:
    if size >= 1024 * MIB:
        return f"{size / (1024 * MIB):.3g} GiB"
    if size >= MIB:
        return f"{size / MIB:.3g} MiB"
    return f"{size / 1024:g} KiB" if size >= 1024 else f"{size} bytes"


# ---------------------------------------------------------------- reading

def read_bytes(path: PathArg, what: str = "", *, limit: int = CONFIG_LIMIT,
               missing: str = "") -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    Opened without blocking, so a FIFO is refused rather than waited on; the
    size is checked before anything is read. `missing` is the next step to
    suggest when the file does not exist.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error(path, exc, what, missing if exc.errno == errno.ENOENT else "") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise MfhelmError(f"{label(path, what)}: {_REASONS[errno.EISDIR]}")
        if not stat.S_ISREG(st.st_mode):
            raise MfhelmError(f"{label(path, what)}: not a regular file "
                              "(a FIFO, socket or device cannot be read here)")
        if st.st_size > limit:
            raise MfhelmError(f"{label(path, what)}: larger than {_human(limit)} "
                              f"({_human(st.st_size)}); is this the right file?")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(limit + 1 - size, MIB)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # it grew while we read
                raise MfhelmError(f"{label(path, what)}: larger than {_human(limit)}")
        return b"".join(chunks)
    except OSError as exc:
        raise os_error(path, exc, what) from None
    finally:
        os.close(fd)


def read_text(path: PathArg, what: str = "", *, limit: int = CONFIG_LIMIT, missing: str = "",
              encoding: str = "utf-8") -> str:
    """read_bytes, decoded as UTF-8 (`utf-8-sig` also drops a byte-order mark)."""
    data = read_bytes(path, what, limit=limit, missing=missing)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise MfhelmError(f"{label(path, what)}: not UTF-8 text "
                          f"(invalid byte at offset {exc.start})") from None


def _one_line(exc: Exception) -> str:
    # PyYAML's marked errors quote the offending line with a caret under it;
    # the problem and where it is say the same in one line.
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def parse_document(text: str, where: str, kind: str, parse: Callable[[str], Any],
                   errors: tuple[type[Exception], ...], invalid: str = "") -> Any:
    """`parse(text)` with its failures, a document nested too deeply for
    Python's recursion limit included, turned into one line; `invalid` is the
    next step to suggest."""
    hint = f"; {invalid}" if invalid else ""
    try:
        return parse(text)
    except RecursionError:
        raise MfhelmError(f"{where}: nested too deeply to be read as {kind}{hint}") from None
    except YamlBombError as exc:
        raise MfhelmError(f"{where}: refused: {exc}") from None
    except errors as exc:
        raise MfhelmError(f"{where}: not valid {kind} ({_one_line(exc)}){hint}") from None


def load_json(path: PathArg, what: str = "", *, missing: str = "", invalid: str = "",
              limit: int = CONFIG_LIMIT) -> Any:
    text = read_text(path, what, limit=limit, missing=missing, encoding="utf-8-sig")
    return parse_document(text, label(path, what), "JSON", json.loads, (ValueError,), invalid)


def load_toml(path: PathArg, what: str = "", *, missing: str = "") -> dict[str, Any]:
    import tomllib

    text = read_text(path, what, missing=missing)
    data: dict[str, Any] = parse_document(text, label(path, what), "TOML", tomllib.loads,
                                          (tomllib.TOMLDecodeError,))
    return data


# YAML anchors and aliases let a few hundred bytes stand for billions of
# nodes ("billion laughs"). PyYAML builds an alias as a shared object, so
# loading is quick, but whatever walks or copies the result (a merge of
# values, json.dumps, helm) pays for the whole expansion. Each document's
# node graph is therefore measured as composed, before any object is built:
# aliases may add at most this many nodes to a file, and an alias inside its
# own anchor (a cycle) is refused. Real values files add hundreds.
MAX_YAML_ALIAS_NODES = 1_000_000
# Sizes saturate here, so a bomb is measured without huge integers.
_SATURATED = 1 << 62


class YamlBombError(Exception):
    """A YAML document whose aliases expand beyond MAX_YAML_ALIAS_NODES, or loop."""


def _children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def expanded_size(node: Any) -> tuple[int, int]:
    """(nodes as composed, nodes once every alias is expanded) of a YAML node
    graph; linear in the graph, iterative (no recursion limit). Raises
    YamlBombError for an alias that contains itself."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(node, False)]
    while stack:
        current, finished = stack.pop()
        key = id(current)
        if finished:
            on_path.discard(key)
            total = 1 + sum(sizes[id(c)] for c in _children(current))
            sizes[key] = min(total, _SATURATED)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise YamlBombError("an alias refers to the node that contains it (a cycle)")
        on_path.add(key)
        stack.append((current, True))
        stack.extend((c, False) for c in _children(current) if id(c) not in sizes)
    return len(sizes), sizes[id(node)]


def bounded_yaml_loader(base: Any) -> Any:
    """`base` (a PyYAML Loader class) refusing alias expansion beyond
    MAX_YAML_ALIAS_NODES over a whole stream, before it builds any object."""

    class Bounded(base):
        _alias_nodes = 0

        def compose_document(self) -> Any:
            node = super().compose_document()
            if node is not None:
                composed, expanded = expanded_size(node)
                self._alias_nodes += expanded - composed
                if self._alias_nodes > MAX_YAML_ALIAS_NODES:
                    raise YamlBombError(
                        f"its aliases expand to more than {MAX_YAML_ALIAS_NODES:,} extra "
                        "nodes (a YAML alias bomb?)")
            return node

    return Bounded


def safe_load_yaml(text: str) -> Any:
    """yaml.safe_load with the alias bound."""
    import yaml

    return yaml.load(text, Loader=bounded_yaml_loader(yaml.SafeLoader))


def load_yaml(path: PathArg, what: str = "", *, missing: str = "") -> Any:
    import yaml

    text = read_text(path, what, missing=missing)
    return parse_document(text, label(path, what), "YAML", safe_load_yaml,
                          (yaml.YAMLError, YamlBombError))


# ---------------------------------------------------------------- writing

def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_SYMLINK = ("is a symbolic link; mfhelm does not write through links (remove it, or give "
            "the path it points to)")


def write_text(path: PathArg, text: str, what: str = "", *, private: bool = False,
               stream_ok: bool = False) -> Path:
    """Write `text` atomically: a new file beside it (O_EXCL, mode 0600 from
    the start), then a rename over the name.

    A symbolic link at `path` is refused, dangling or not: writing through it
    would put the file somewhere the user did not name. (The rename cannot
    follow one made in the meantime either: it replaces the link itself.) A
    path ending in '/' names a directory, never a file. With `stream_ok`, a
    device or pipe (/dev/null, /dev/stdout, `>(cmd)`) is written in place;
    otherwise it is refused.

    Modes never follow a permissive umask: `private` files are 0600; others
    get 0644 (narrowed by the umask), or keep an existing file's mode without
    write access for group and others. Returns `path`.
    """
    where = label(path, what)
    raw = os.fspath(path)
    if not raw:
        raise MfhelmError(f"{what or 'the file to write'}: an empty path; give a file name")
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise os_error(path, exc, what) from None
    if raw.endswith(os.sep) and (st is None or not stat.S_ISDIR(st.st_mode)):
        raise MfhelmError(f"{where}: directory {raw} does not exist (a path ending in "
                          f"'{os.sep}' names a directory; give a file name)")
    if st is not None and stat.S_ISLNK(st.st_mode):
        try:
            target = os.stat(path)
        except FileNotFoundError:
            raise MfhelmError(f"{where}: {_SYMLINK}") from None
        except OSError as exc:  # a symlink loop, and the like
            raise os_error(path, exc, what) from None
        if not (stream_ok and _is_stream(target)):
            raise MfhelmError(f"{where}: {_SYMLINK}")
        st = target
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise MfhelmError(f"{where}: {_REASONS[errno.EISDIR]}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        if not stream_ok:
            raise MfhelmError(f"{where}: not a regular file (a FIFO, socket or device)")
        _write_stream(path, text, what)
        return Path(path)

    if private:
        mode = 0o600
    elif st is not None:
        mode = stat.S_IMODE(st.st_mode) & ~0o022
    else:
        mode = 0o644 & ~_umask()
    target_path = Path(path)
    directory = target_path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target_path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise MfhelmError(f"{where}: directory {directory} does not exist") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise MfhelmError(f"{where}: permission denied (cannot create files in "
                              f"{directory})") from None
        raise os_error(path, exc, what) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, target_path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise os_error(path, exc, what) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(path)


def _is_stream(st: os.stat_result) -> bool:
    return not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode)


def create_exclusive(path: PathArg, data: bytes, what: str = "") -> None:
    """A new private (0600) file at `path`; FileExistsError if anything, a
    dangling symlink included, is already there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise
    except OSError as exc:
        raise os_error(path, exc, what) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), 0o600)
    except OSError as exc:
        Path(path).unlink(missing_ok=True)
        raise os_error(path, exc, what) from None


def _write_stream(path: PathArg, text: str, what: str) -> None:
    # Non-blocking open: a FIFO nobody reads fails (ENXIO) instead of hanging.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise MfhelmError(f"{label(path, what)}: a FIFO nobody is reading") from None
        raise os_error(path, exc, what) from None
    try:
        os.set_blocking(fd, True)
        with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as fh:
            fh.write(text)
    except OSError as exc:
        raise os_error(path, exc, what) from None
    finally:
        os.close(fd)


def ensure_dir(path: PathArg, what: str = "", *, mode: int = 0o700) -> Path:
    """Create the directory (and its parents) unless it exists."""
    p = Path(path)
    try:
        p.mkdir(mode=mode, parents=True, exist_ok=True)
    except FileExistsError:
        raise MfhelmError(f"{label(path, what)}: exists and is not a directory") from None
    except OSError as exc:
        raise os_error(path, exc, what) from None
    return p
