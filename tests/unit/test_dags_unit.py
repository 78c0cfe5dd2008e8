"""dag-push's validation, packing and remote script, without a cluster."""

import hashlib
import io
import subprocess
import tarfile

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


def test_copy_script_runs_for_real_in_sh(tmp_path):
    """The remote script, run by a local sh: unpack, atomic rename, checksum."""
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "flow.py").write_text("old\n")
    data = b"from airflow import DAG\nDAG('new')\n"
    archive = dags.pack("flow.py", data)
    # Extra bytes after the archive must not be read: exec stdin may not close.
    proc = subprocess.run(dags.copy_script(str(folder), "flow.py", len(archive)),
                          input=archive + b"\0" * 50, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "flow.py").read_bytes() == data
    assert proc.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in folder.iterdir()) == ["flow.py"]


def test_copy_script_quotes_hostile_folder(tmp_path):
    folder = tmp_path / "it's $(here)"
    folder.mkdir()
    archive = dags.pack("d.py", b"x")
    proc = subprocess.run(dags.copy_script(str(folder), "d.py", len(archive)), input=archive,
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "d.py").read_bytes() == b"x"


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
