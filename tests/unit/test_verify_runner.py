"""The `mfhelm verify` runner (mfhelm.verify.core) with small real checks:
they make and remove files, run real child processes, fail with Failed and
skip with Skipped. Order, stop at the first failure, the table, the undo list
last-first, --keep, the deadline and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mfhelm.errors import Interrupted, MfhelmError
from mfhelm.stack import Target
from mfhelm.verify import core
from mfhelm.verify.model import Check, Failed, Run, Skipped, Stack

ROOT = Path(__file__).resolve().parents[2]


def make_stack(tmp_path: Path, **flags: bool) -> Stack:
    return Stack(target=Target("mf", "mf"), profile="local", flow_namespace="mf-flows",
                 chart_app_version="2.5.1", argo=flags.get("argo", False),
                 argo_events=False, airflow=flags.get("airflow", False),
                 config={}, config_file=tmp_path / "config.json")


def make_run(tmp_path: Path, *, seconds: float = 60, keep: bool = False) -> Run:
    return Run(workdir=tmp_path, deadline=time.monotonic() + seconds, keep=keep)


def file_check(name: str, path: Path, undone: list[str]) -> Check:
    """Makes `path` (its removal registered first), as a real check does."""

    def run(stack: Stack, run: Run) -> str:
        def undo() -> None:
            path.unlink()
            undone.append(name)

        run.on_cleanup(f"file {path.name}", undo)
        path.write_text(name)
        return f"made {path.name}"

    return Check(name, lambda stack: True, run)


def failing_check(name: str, saw: str, fix: str) -> Check:
    def run(stack: Stack, run: Run) -> str:
        raise Failed(saw, fix)

    return Check(name, lambda stack: True, run)


def sleeping_check(name: str, pid_file: Path) -> Check:
    """A check that waits on a real child (mfhelm.proc registers it)."""
    from mfhelm import proc

    def run(stack: Stack, run: Run) -> str:
        child = proc.start([sys.executable, "-c",
                            f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                            "time.sleep(300)"])
        child.wait()
        return "woke"

    return Check(name, lambda stack: True, run)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; /proc tells them apart.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_checks_run_in_order_and_undo_runs_last_first(tmp_path: Path):
    undone: list[str] = []
    checks = [file_check(n, tmp_path / f"{n}.txt", undone) for n in ("one", "two", "three")]
    lines: list[str] = []
    run = make_run(tmp_path)
    core.execute(make_stack(tmp_path), run, checks, timeout_text="1m", echo=lines.append,
                 warn=lines.append)
    table = lines[0].splitlines()
    assert [ln.split()[0] for ln in table[1:]] == ["one", "two", "three"]
    assert all(" ok made " in ln for ln in table[1:])
    assert undone == ["three", "two", "one"]
    assert not list(tmp_path.glob("*.txt"))
    assert run.cleanups == []


def test_stops_at_the_first_failure_and_names_it(tmp_path: Path):
    undone: list[str] = []
    checks = [file_check("made", tmp_path / "made.txt", undone),
              failing_check("broken", "403 from Blob", "grant the role"),
              file_check("later", tmp_path / "later.txt", undone)]
    lines: list[str] = []
    with pytest.raises(MfhelmError) as err:
        core.execute(make_stack(tmp_path), make_run(tmp_path), checks, timeout_text="1m",
                     echo=lines.append, warn=lines.append)
    assert str(err.value) == "broken: 403 from Blob; grant the role"
    rows = {ln.split()[0]: ln for ln in lines[0].splitlines()[1:]}
    assert "FAILED" in rows["broken"]
    assert rows["later"].split()[1:] == ["not", "run"]
    assert not (tmp_path / "later.txt").exists()      # never ran
    assert undone == ["made"]                           # what ran is undone


def test_table_columns_and_skips(tmp_path: Path):
    undone: list[str] = []

    def unreachable(stack: Stack, run: Run) -> str:
        raise Skipped("UI backend not reachable")

    checks = [file_check("metadata service", tmp_path / "a.txt", undone),
              Check("argo run", lambda stack: stack.argo, lambda s, r: "never"),
              Check("ui", lambda stack: True, unreachable)]
    rows: list[core.Row] = []
    failure = core.run_checks(make_stack(tmp_path, argo=False), make_run(tmp_path), checks, rows)
    assert failure is None
    text = core.table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["check", "result", "seconds"]
    assert lines[2] == "argo run          skipped (not in this release)"
    assert lines[3].startswith("ui                skipped (UI backend not reachable)")
    # Every row's result starts in the header's result column.
    col = lines[0].index("result")
    assert all(ln[col - 2:col] == "  " and ln[col] != " " for ln in lines[1:])
    # Seconds only for checks that ran, right-aligned under the header.
    assert lines[1].rstrip().endswith(f"{rows[0].seconds:7.1f}")
    assert rows[1].seconds is None


def test_keep_leaves_everything_and_says_what(tmp_path: Path):
    undone: list[str] = []
    checks = [file_check("one", tmp_path / "one.txt", undone)]
    said: list[str] = []
    core.execute(make_stack(tmp_path), make_run(tmp_path, keep=True), checks,
                 timeout_text="1m", echo=lambda s: None, warn=said.append)
    assert (tmp_path / "one.txt").exists()
    assert undone == []
    assert said == ["kept (--keep): file one.txt"]


def test_a_failing_undo_is_reported_and_the_rest_still_run(tmp_path: Path):
    undone: list[str] = []
    checks = [file_check("one", tmp_path / "one.txt", undone),
              file_check("two", tmp_path / "two.txt", undone)]
    said: list[str] = []
    run = make_run(tmp_path)
    core.run_checks(make_stack(tmp_path), run, checks, [])
    (tmp_path / "two.txt").unlink()   # gone already: its undo fails
    core.run_cleanups(run, said.append)
    assert undone == ["one"]
    assert len(said) == 1 and said[0].startswith("cleanup failed: file two.txt: ")


def test_the_deadline_stops_a_check_and_its_children(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    undone: list[str] = []
    checks = [file_check("first", tmp_path / "first.txt", undone),
              sleeping_check("slow", pid_file),
              file_check("after", tmp_path / "after.txt", undone)]
    lines: list[str] = []
    start = time.monotonic()
    with pytest.raises(MfhelmError) as err:
        core.execute(make_stack(tmp_path), make_run(tmp_path, seconds=3), checks,
                     timeout_text="3s", echo=lines.append, warn=lines.append)
    took = time.monotonic() - start
    assert str(err.value).startswith("slow: did not finish within --timeout 3s; ")
    assert took < 30
    pid = int(pid_file.read_text())
    assert not alive(pid)
    rows = {ln.split()[0]: ln for ln in lines[0].splitlines()[1:]}
    assert "FAILED" in rows["slow"] and rows["after"].endswith("not run")
    assert undone == ["first"]


INTERRUPT_SCRIPT = textwrap.dedent("""
    import json, signal, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from mfhelm import proc
    from mfhelm.errors import Interrupted
    from mfhelm.verify import core
    import test_verify_runner as t

    signal.signal(signal.SIGINT, proc.on_signal)
    tmp = Path(sys.argv[1])
    undone = []
    checks = [t.file_check("first", tmp / "first.txt", undone),
              t.sleeping_check("slow", tmp / "child.pid"),
              t.file_check("after", tmp / "after.txt", undone)]
    lines = []
    try:
        core.execute(t.make_stack(tmp), t.make_run(tmp, seconds=300), checks,
                     timeout_text="5m", echo=lines.append, warn=lines.append)
        out = {{"raised": None}}
    except Interrupted as exc:
        out = {{"raised": list(exc.args)}}
    out.update(undone=undone, lines=lines)
    print(json.dumps(out))
""")


def test_ctrl_c_stops_the_check_runs_the_undo_and_says_so(tmp_path: Path):
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT_SCRIPT.format(tests=str(Path(__file__).parent)))
    work = tmp_path / "work"
    work.mkdir()
    child = subprocess.Popen([sys.executable, str(script), str(work)], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not (work / "child.pid").exists():
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=60)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["raised"] == [signal.SIGINT, "verify stopped; what it made was removed"]
    assert got["undone"] == ["first"]
    rows = {ln.split()[0]: ln for ln in got["lines"][0].splitlines()[1:]}
    assert "interrupted" in rows["slow"] and rows["after"].endswith("not run")
    assert not (work / "first.txt").exists()
    assert not alive(int((work / "child.pid").read_text()))


def test_no_progress_line_without_a_terminal(tmp_path: Path, capfd: pytest.CaptureFixture[str]):
    undone: list[str] = []
    core.execute(make_stack(tmp_path), make_run(tmp_path),
                 [file_check("one", tmp_path / "one.txt", undone)], timeout_text="1m",
                 echo=print, warn=print)
    out, err = capfd.readouterr()
    assert err == ""
    assert out.splitlines()[0].split() == ["check", "result", "seconds"]


def test_progress_names_the_running_check_on_a_terminal(tmp_path: Path):
    import io

    from rich.console import Console

    progress = core.Progress(enabled=True)
    buffer = io.StringIO()
    progress.console = Console(file=buffer, force_terminal=True, width=100)
    undone: list[str] = []

    def slow(stack: Stack, run: Run) -> str:
        time.sleep(1.0)
        return "done"

    core.execute(make_stack(tmp_path), make_run(tmp_path), [Check("slow one", lambda s: True, slow)],
                 timeout_text="1m", echo=lambda s: None, warn=lambda s: None, progress=progress)
    assert "verify: slow one (" in buffer.getvalue()
    assert undone == []


def test_an_unexpected_error_still_prints_the_table_and_undoes(tmp_path: Path):
    undone: list[str] = []

    def bug(stack: Stack, run: Run) -> str:
        raise ZeroDivisionError("a bug")

    lines: list[str] = []
    with pytest.raises(ZeroDivisionError):
        core.execute(make_stack(tmp_path), make_run(tmp_path),
                     [file_check("one", tmp_path / "one.txt", undone),
                      Check("buggy", lambda s: True, bug)],
                     timeout_text="1m", echo=lines.append, warn=lines.append)
    assert undone == ["one"]
    assert lines and lines[0].splitlines()[1].startswith("one")


def test_the_layers_run_in_the_issues_order():
    names = [c.name for c in core.all_checks()]
    # The flow image before the orchestrators, whose runs start pods from it.
    assert names[:3] == ["metadata service", "local run", "flow image"]
    assert names[-1] == "ui"
    try:
        from mfhelm.verify.checks_orchestrators import CHECKS
    except ModuleNotFoundError:
        CHECKS = []
    assert names[3:-1] == [c.name for c in CHECKS]


def test_new_run_copies_the_shipped_flow_and_removes_its_directory_last(tmp_path: Path):
    run = core.new_run(timeout_seconds=60, keep=False)
    try:
        flow = run.workdir / "mfhelm_verify_flow.py"
        assert "class MfhelmVerifyFlow(FlowSpec)" in flow.read_text()
        run.on_cleanup("later", lambda: None)
        assert run.cleanups[0][0] == f"scratch directory {run.workdir}"
    finally:
        core.run_cleanups(run, lambda s: None)
    assert not run.workdir.exists()


def test_interrupted_is_not_swallowed_as_a_failure(tmp_path: Path):
    def ctrl_c(stack: Stack, run: Run) -> str:
        raise Interrupted(signal.SIGINT)

    rows: list[core.Row] = []
    with pytest.raises(Interrupted):
        core.run_checks(make_stack(tmp_path), make_run(tmp_path),
                        [Check("a", lambda s: True, ctrl_c), Check("b", lambda s: True,
                                                                    lambda s, r: "x")], rows)
    assert [(r.check, r.result) for r in rows] == [("a", "interrupted"), ("b", "not run")]
