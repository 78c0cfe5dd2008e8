"""Every child process mfhelm starts (helm, az): bounded in time, in a process
group of its own, and stopped as a whole group on a timeout or when mfhelm
is interrupted.

A child runs in its own session, so a terminal's Ctrl-C reaches only
mfhelm; mfhelm then stops the child's whole group (SIGTERM, SIGKILL after a
grace period), so that helm's or az's own children go with it. Live
children are registered: one a worker thread waits on (the values check)
is stopped too, by stop_all().

Signals (installed by the CLI, see on_signal): the first SIGINT or SIGTERM
raises errors.Interrupted(signum) in the main thread, so every `finally`
and context manager runs (temporary files go); a later one does not raise
again (that would cut the cleanup short) but SIGKILLs the children at once.
Starting and stopping a child, and removing a temporary directory, defer the
first signal to their end: a child is never started unregistered, nor a
directory left half removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from mfhelm.errors import Interrupted, MfhelmError

# The bound of a call that neither waits on the cluster nor on Azure for long:
# `helm version`, `helm template`, `helm status`, `helm get values`.
QUICK_TIMEOUT = 120.0
# After SIGTERM, how long a child's group has to exit before SIGKILL.
GRACE = 10.0
# The longest wait select() can be given (2**31 ms), in whole days: 24.
LONGEST = 24 * 86400.0


class TimedOut(MfhelmError):
    """A child that did not finish within its bound (and was stopped)."""

    def __init__(self, what: str, timeout: float, stderr: str = "") -> None:
        super().__init__(f"{what} did not finish within {seconds_text(timeout)}; stopped it")
        self.what = what
        self.timeout = timeout
        self.stderr = stderr


def seconds_text(seconds: float) -> str:
    """90 -> '1m30s', 7200 -> '2h', 0.5 -> '0.5s'."""
    if seconds < 1:
        return f"{seconds:g}s"
    whole = int(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n) or "0s"


# Reentrant: the signal handler (kill_all) may run while the main thread holds it.
_lock = threading.RLock()
_live: set[subprocess.Popen[Any]] = set()
# The first signal; whether Interrupted was raised for it; the main thread's
# depth of deferred sections.
_state: dict[str, Any] = {"signal": None, "raised": False, "defer": 0}


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def on_signal(signum: int, frame: Any = None) -> None:
    """The handler of SIGINT and SIGTERM (the CLI installs it; Python runs it
    in the main thread)."""
    if _state["signal"] is not None:
        kill_all(signal.SIGKILL)
        return
    _state["signal"] = signum
    if _state["defer"] == 0:
        _state["raised"] = True
        raise Interrupted(signum)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """A section of the main thread that the first signal does not cut: it is
    raised at the section's end. (Other threads never see Interrupted raised
    by the handler.)"""
    if not _main_thread():
        yield
        return
    _state["defer"] += 1
    try:
        yield
    finally:
        _state["defer"] -= 1
        if _state["defer"] == 0 and _state["signal"] is not None and not _state["raised"]:
            _state["raised"] = True
            raise Interrupted(_state["signal"])


def start(argv: Sequence[str], *, stdin: int | IO[Any] | None = subprocess.DEVNULL,
          stdout: int | IO[Any] | None = subprocess.PIPE,
          stderr: int | IO[Any] | None = subprocess.PIPE, text: bool = True,
          env: Mapping[str, str] | None = None,
          pass_fds: Sequence[int] = (),
          cwd: str | os.PathLike[str] | None = None) -> subprocess.Popen[Any]:
    """Popen in a new session (its own process group), registered until reaped."""
    with deferred_signals():
        try:
            child: subprocess.Popen[Any] = subprocess.Popen(
                list(argv), stdin=stdin, stdout=stdout, stderr=stderr, text=text,
                env=dict(env) if env is not None else None, pass_fds=tuple(pass_fds),
                start_new_session=True, cwd=cwd)
        except OSError as exc:
            raise MfhelmError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        with _lock:
            _live.add(child)
    if _state["signal"] is not None and not _main_thread():
        # Started by a worker thread while the main thread was being interrupted:
        # stop_all() may have run before this child was registered.
        stop(child)
        raise Interrupted(_state["signal"])
    return child


def _signal_group(child: subprocess.Popen[Any], sig: int) -> None:
    """Signal the group of a child not yet reaped (its pid, the group's id,
    cannot have been reused)."""
    if child.returncode is None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)


def _exited(child: subprocess.Popen[Any], wait: float) -> bool:
    """Whether the child has exited, within `wait` seconds, leaving it
    unreaped (WNOWAIT), so its group id stays its own."""
    deadline = time.monotonic() + wait
    while True:
        if child.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped by another thread
            return True
        if info is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def kill_all(sig: int = signal.SIGKILL) -> None:
    """Send `sig` to every live child's group, without waiting."""
    with _lock:
        children = list(_live)
    for child in children:
        _signal_group(child, sig)


def _close_pipes(child: subprocess.Popen[Any]) -> None:
    for pipe in (child.stdin, child.stdout, child.stderr):
        if pipe is not None:
            with suppress(OSError):
                pipe.close()


def forget(child: subprocess.Popen[Any]) -> None:
    with _lock:
        _live.discard(child)


def stop(child: subprocess.Popen[Any], grace: float | None = None) -> None:
    """SIGTERM to the child's whole group, SIGKILL after `grace` seconds; then
    SIGKILL to whatever the group still holds (the leader, exited but not yet
    reaped, keeps the group id from being reused); reaped, pipes closed,
    forgotten."""
    with deferred_signals():
        try:
            if not _exited(child, 0):
                _signal_group(child, signal.SIGTERM)
                if not _exited(child, GRACE if grace is None else grace):
                    _signal_group(child, signal.SIGKILL)
                    _exited(child, 5.0)
            _signal_group(child, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                child.wait(5.0)
        finally:
            _close_pipes(child)
            forget(child)


def stop_all(grace: float | None = None) -> None:
    """Stop every live child (their groups get SIGTERM together, then each is
    waited for), e.g. one a worker thread started."""
    with _lock:
        children = list(_live)
    for child in children:
        _signal_group(child, signal.SIGTERM)
    for child in children:
        stop(child, grace)


def run(argv: Sequence[str], *, timeout: float, what: str, input: str | bytes | None = None,
        capture: bool = True, text: bool = True, env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        started: Callable[[], None] | None = None,
        cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[Any]:
    """Run a child to completion within `timeout` seconds. On the timeout its
    group is stopped and TimedOut raised; on anything else (an interrupt)
    its group is stopped and the exception goes on. `started` is called once
    the child runs (e.g. to close the parent's end of a pipe it was passed)."""
    child = start(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                  stdout=subprocess.PIPE if capture else None,
                  stderr=subprocess.PIPE if capture else None, text=text, env=env,
                  pass_fds=pass_fds, cwd=cwd)
    try:
        if started is not None:
            started()
        out, err = child.communicate(input, timeout=min(timeout, LONGEST))
    except subprocess.TimeoutExpired as exc:
        stop(child)
        partial = exc.stderr or b""
        raise TimedOut(what, timeout, partial.decode(errors="replace")
                       if isinstance(partial, bytes) else partial) from None
    except BaseException:
        stop(child)
        raise
    forget(child)
    if _state["signal"] is not None and child.returncode < 0:
        # Stopped by stop_all() while a worker thread waited on it.
        raise Interrupted(_state["signal"])
    empty: str | bytes = "" if text else b""
    return subprocess.CompletedProcess(child.args, child.returncode, out if capture else empty,
                                       err if capture else empty)


_temp_dirs: set[Path] = set()


def temp_dir(prefix: str) -> Path:
    """A new private temporary directory, registered until remove_tree(): the
    CLI removes any left on its way out (cleanup()), whatever cut the code
    that owns it short."""
    with deferred_signals():
        path = Path(tempfile.mkdtemp(prefix=prefix))
        with _lock:
            _temp_dirs.add(path)
    return path


def remove_tree(path: str | os.PathLike[str]) -> None:
    """shutil.rmtree that a signal does not cut halfway."""
    with deferred_signals():
        shutil.rmtree(Path(path), ignore_errors=True)
        with _lock:
            _temp_dirs.discard(Path(path))


def cleanup() -> None:
    """Stop every child still running and remove every temporary directory
    still registered: the CLI's last step on any exit."""
    stop_all()
    with _lock:
        left = list(_temp_dirs)
    for path in left:
        remove_tree(path)
