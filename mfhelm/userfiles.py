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


def load_yaml(path: PathArg, what: str = "", *, missing: str = "") -> Any:
    import yaml

    text = read_text(path, what, missing=missing)
    return parse_document(text, label(path, what), "YAML", yaml.safe_load, (yaml.YAMLError,))


# ---------------------------------------------------------------- writing

def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: PathArg, text: str, what: str = "", *, private: bool = False,
               stream_ok: bool = False) -> Path:
    """Write `text` atomically (a temporary file beside it, then a rename).

    A symlink is written through to its target. With `stream_ok`, a device or
    pipe (/dev/null, /dev/stdout, `>(cmd)`) is written in place; otherwise it
    is refused. `private` files are 0600; others keep an existing file's
    mode, or get the umask's. Returns `path`.
    """
    where = label(path, what)
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None  # a new file (or a dangling symlink, whose target is created)
    except OSError as exc:
        raise os_error(path, exc, what) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise MfhelmError(f"{where}: {_REASONS[errno.EISDIR]}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        if not stream_ok:
            raise MfhelmError(f"{where}: not a regular file (a FIFO, socket or device)")
        _write_stream(path, text, what)
        return Path(path)

    real = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    directory = real.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=directory)
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
            os.fsync(fh.fileno())
        if private:
            mode = 0o600
        elif st is not None:
            mode = stat.S_IMODE(st.st_mode)
        else:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, real)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise os_error(path, exc, what) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(path)


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
