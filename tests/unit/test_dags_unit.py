"""dag-push's validation, packing and remote script, without a cluster."""

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from mfhelm import dags
from mfhelm.errors import MfhelmError

METAFLOW_SHAPE = '''
from airflow import DAG
from datetime import timedelta

class Workflow:
    @classmethod
    def from_dict(cls, d):
        return cls()

    def compile(self):
        return DAG(dag_id="flow")

CONFIG = {"name": "flow"}
dag = Workflow.from_dict(CONFIG).compile()
with dag:
    pass
'''


@pytest.mark.parametrize("source", [
    METAFLOW_SHAPE,
    "from airflow import DAG\nwith DAG('x') as d:\n    pass\n",
    "import airflow\nd = airflow.DAG('x')\n",
    "from airflow.decorators import dag\n@dag()\ndef f():\n    pass\nf()\n",
    "from airflow.models import DAG as D\nD('x')\n",
])
def test_dag_files_accepted(tmp_path, source):
    f = tmp_path / "d.py"
    f.write_text(source)
    assert dags.validate_dag_file(f) == source.encode()


@pytest.mark.parametrize(("source", "fragment"), [
    ("x = 1\n", "defines no Airflow DAG"),
    ("from airflow import DAG\n", "defines no Airflow DAG"),
    ("from mylib import DAG\nDAG('x')\n", "defines no Airflow DAG"),
    ("def f(:\n", "not valid Python"),
    ("x = '\0'\n", "Python"),
])
def test_dag_files_refused(tmp_path, source, fragment):
    f = tmp_path / "d.py"
    f.write_text(source)
    with pytest.raises(MfhelmError, match=fragment):
        dags.validate_dag_file(f)


def test_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "d.py"
    f.write_text("from airflow import DAG\n\nx = (\n")
    with pytest.raises(MfhelmError, match=r"d\.py:3"):
        dags.validate_dag_file(f)


def test_directory_and_suffix(tmp_path):
    with pytest.raises(MfhelmError, match="not a regular file"):
        dags.validate_dag_file(tmp_path)
    (tmp_path / "x.txt").write_text("from airflow import DAG\nDAG('x')\n")
    with pytest.raises(MfhelmError, match="not a Python file"):
        dags.validate_dag_file(tmp_path / "x.txt")


@pytest.mark.parametrize(("path", "name", "expected"), [
    ("a/b/my-dag.py", None, "my-dag.py"),
    ("x.py", "renamed.py", "renamed.py"),
    ("x.py", "v1.2_dag.py", "v1.2_dag.py"),
])
def test_dag_name(path, name, expected):
    assert dags.dag_name(path, name) == expected


@pytest.mark.parametrize("name", ["renamed", "../x.py", "a/b.py", "..py", "a..b.py", "x.py\n"])
def test_dag_name_given_must_be_a_plain_dag_file_name(name):
    with pytest.raises(MfhelmError, match="not a plain DAG file name"):
        dags.dag_name("x.py", name)


def test_dag_file_over_the_size_limit_is_not_read(tmp_path):
    f = tmp_path / "big.py"
    with f.open("wb") as fh:
        fh.truncate(dags.MAX_DAG_BYTES + 1)
    with pytest.raises(MfhelmError, match=r"larger than 1 MiB"):
        dags.validate_dag_file(f)


@pytest.mark.parametrize("bad", ["../evil.py", "a/b.py", ".hidden.py", "sp ace.py", "x;rm.py"])
def test_dag_name_refuses_paths_and_odd_names(bad):
    with pytest.raises(MfhelmError, match="DAG file name"):
        dags.dag_name("x.py", bad)


def test_pack_holds_exactly_one_file():
    data = b"from airflow import DAG\n" * 100
    archive = dags.pack("flow.py", data)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["flow.py"]
        assert members[0].mode == 0o644
        assert tar.extractfile(members[0]).read() == data


def _airflow_bin() -> Path:
    """The pinned Airflow's environment (tools.toml), whose `python` plays the
    scheduler container's."""
    found = shutil.which("airflow")
    if found is None:
        pytest.fail("airflow is not on PATH: tools.toml pins it, `make dev` installs it")
    return Path(os.path.realpath(found)).parent


def _run_in_scheduler(tmp_path: Path, folder: Path, name: str, data: bytes,
                      *, path: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """The remote script, run by a local sh as the scheduler container would run it."""
    archive = dags.pack(name, data)
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow-home"),
           "PATH": path if path is not None else f"{_airflow_bin()}:/usr/bin:/bin"}
    # Extra bytes after the archive must not be read: exec stdin may not close.
    return subprocess.run(dags.copy_script(str(folder), name, len(archive)),
                          input=archive + b"\0" * 50, capture_output=True, env=env, timeout=120)


def test_copy_script_runs_for_real_in_sh(tmp_path):
    """Unpack, Airflow's DagBag loads the staged file, atomic rename, checksum;
    in a folder whose name needs quoting."""
    folder = tmp_path / "it's $(dags)"
    folder.mkdir()
    (folder / "flow.py").write_text("old\n")
    data = b"from airflow import DAG\ndag = DAG('new')\n"
    proc = _run_in_scheduler(tmp_path, folder, "flow.py", data)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "flow.py").read_bytes() == data
    assert proc.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in folder.iterdir()) == ["flow.py"]


@pytest.mark.parametrize(("source", "reason"), [
    # Compiles and imports DAG from airflow, so the local check passes; only
    # Airflow loading it finds the problem.
    ("from airflow import DAG\nimport no_such_module_anywhere\nd = DAG('x')\n",
     "No module named 'no_such_module_anywhere'"),
    # A DAG object not kept at module level is never seen by the scheduler.
    ("from airflow import DAG\nDAG('x')\n", "Airflow found no DAG in it"),
])
def test_copy_script_refuses_what_airflow_cannot_load(tmp_path, source, reason):
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "flow.py").write_text("old\n")
    dags.validate_dag_file(_write(tmp_path / "flow.py", source))  # the local check passes
    proc = _run_in_scheduler(tmp_path, folder, "flow.py", source.encode())
    assert proc.returncode == dags.REFUSED_EXIT, proc.stderr
    assert proc.stderr.decode().strip().splitlines()[-1].endswith(reason)
    # The live file is untouched and nothing staged is left behind.
    assert sorted(p.name for p in folder.iterdir()) == ["flow.py"]
    assert (folder / "flow.py").read_text() == "old\n"


def test_copy_script_without_python_pushes_nothing(tmp_path):
    folder = tmp_path / "dags"
    folder.mkdir()
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    for tool in ("sh", "head", "tar", "mkdir", "rm", "mv", "rmdir", "sha256sum"):
        os.symlink(shutil.which(tool), bare / tool)
    proc = _run_in_scheduler(tmp_path, folder, "flow.py", b"from airflow import DAG\n",
                             path=str(bare))
    assert proc.returncode == dags.NO_PYTHON_EXIT, proc.stderr
    assert list(folder.iterdir()) == []


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("status", "code"), [
    (None, 0),
    ('{"metadata":{},"status":"Success"}', 0),
    ('{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}', 3),
    (b'{"status":"Failure","message":"command terminated: exit status 7"}', 7),
    ('{"status":"Failure","message":"container not found"}', 1),
    ("not json", 1),
])
def test_exec_status_to_exit_code(status, code):
    from mfhelm.kube import _returncode

    assert _returncode(status) == code
