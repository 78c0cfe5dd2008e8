"""files/db_roles.sql, run exactly as the chart's db-bootstrap Job runs it
(its command, its environment, the files of its ConfigMap), against a real
PostgreSQL whose admin is shaped like Flexible Server's. Then the roles are
used as the applications use them: Metaflow's schema changes and the UI
backend's triggers, and the real Airflow's `airflow db migrate`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from chartlib import CI_VALUES, renderable_chart
from pgserver import ADMIN, ADMIN_PASSWORD, Server

from mfhelm import dbroles

AZURE_AIRFLOW = next(p for p in CI_VALUES if p.name == "azure-airflow-values.yaml")
PASSWORDS = {"metaflow-password": "Metaflow-role-pw-0001", "airflow-password": "Airflow-role-pw-0001"}
# What a migration run as the admin before this change left behind.
LEGACY = """
CREATE TABLE flows_v3 (flow_id varchar(255) PRIMARY KEY, ts_epoch bigint);
CREATE TABLE goose_db_version (id serial PRIMARY KEY, version_id bigint NOT NULL);
CREATE FUNCTION notify_ui_flows_v3() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER notify_ui_flows_v3 AFTER INSERT ON flows_v3 FOR EACH ROW
  EXECUTE PROCEDURE notify_ui_flows_v3();
"""


def _values() -> dict:
    import yaml

    values = yaml.safe_load(AZURE_AIRFLOW.read_text())
    values["database"]["adminUser"] = ADMIN
    return values


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The rendered Job's container and its ConfigMap's files on disk."""
    if not shutil.which("helm"):
        pytest.skip("helm not installed (run `make dev`; tools.toml pins it)")
    configmap, job = dbroles.render(renderable_chart(), _values(), "mf", "metaflow",
                                    shutil.which("helm"))
    sql = tmp_path_factory.mktemp("sql")
    for name, text in configmap["data"].items():
        (sql / name).write_text(text)
    return job["spec"]["template"]["spec"]["containers"][0], sql


@pytest.fixture(scope="module")
def databases(postgres: Server):
    postgres.psql(ADMIN, ADMIN_PASSWORD, "postgres", "CREATE DATABASE metaflow")
    postgres.psql(ADMIN, ADMIN_PASSWORD, "postgres", "CREATE DATABASE airflow")
    postgres.psql(ADMIN, ADMIN_PASSWORD, "metaflow", LEGACY)
    return postgres


def _bootstrap(server: Server, job, secrets: dict[str, str]) -> subprocess.CompletedProcess:
    container, sql = job
    env = {}
    for item in container["env"]:
        if "valueFrom" in item:
            key = item["valueFrom"]["secretKeyRef"]["key"]
            env[item["name"]] = ADMIN_PASSWORD if key == "admin-password" else secrets[key]
        else:
            env[item["name"]] = item["value"]
    # The server is here, without TLS; everything else is the Job's own.
    env.update(PGHOST=server.host, PGPORT=str(server.port), PGSSLMODE="disable")
    command = [str(server.bin / "psql") if c == "psql" else c for c in container["command"]]
    command = [str(sql / Path(c).name) if c.startswith("/sql/") else c for c in command]
    return subprocess.run(command, env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=120)


def _can_connect(server: Server, user: str, password: str, database: str) -> bool:
    return server.psql(user, password, database, "SELECT 1", check=False).returncode == 0


def test_job_makes_roles_that_own_their_database_only(databases: Server, job):
    proc = _bootstrap(databases, job, PASSWORDS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "db roles ready"
    for secret in (*PASSWORDS.values(), ADMIN_PASSWORD):
        assert secret not in proc.stdout + proc.stderr
    mf, af = PASSWORDS["metaflow-password"], PASSWORDS["airflow-password"]
    assert _can_connect(databases, "metaflow", mf, "metaflow")
    assert _can_connect(databases, "airflow", af, "airflow")
    assert not _can_connect(databases, "metaflow", mf, "airflow")
    assert not _can_connect(databases, "airflow", af, "metaflow")
    flags = databases.psql(ADMIN, ADMIN_PASSWORD, "postgres",
                           "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                           "WHERE rolname IN ('metaflow', 'airflow') ORDER BY 1").stdout.split()
    assert flags == ["airflow|f|f|f", "metaflow|f|f|f"]


def test_metaflow_role_runs_migrations_and_the_ui_backends_triggers(databases: Server, job):
    assert _bootstrap(databases, job, PASSWORDS).returncode == 0
    mf = PASSWORDS["metaflow-password"]
    # What goose migrations and the UI backend (DB_TRIGGER_CREATE) do, on
    # objects the admin created before: only an owner may alter the table,
    # replace the function and drop the trigger.
    databases.psql("metaflow", mf, "metaflow", """
        ALTER TABLE flows_v3 ADD COLUMN IF NOT EXISTS tags jsonb;
        CREATE INDEX IF NOT EXISTS flows_v3_ts ON flows_v3 (ts_epoch);
        INSERT INTO goose_db_version (version_id) VALUES (20230118020300);
        CREATE OR REPLACE FUNCTION notify_ui_flows_v3() RETURNS trigger LANGUAGE plpgsql
          AS $$BEGIN PERFORM pg_notify('notify', NEW.flow_id); RETURN NEW; END$$;
        DROP TRIGGER IF EXISTS notify_ui_flows_v3 ON flows_v3;
        CREATE TRIGGER notify_ui_flows_v3 AFTER INSERT OR UPDATE ON flows_v3
          FOR EACH ROW EXECUTE PROCEDURE notify_ui_flows_v3();
        CREATE TABLE IF NOT EXISTS runs_v3 (run_number serial PRIMARY KEY);
        INSERT INTO flows_v3 (flow_id, ts_epoch) VALUES ('HelloFlow', 1);
    """)
    owners = databases.psql(ADMIN, ADMIN_PASSWORD, "metaflow",
                            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE nspname = 'public'").stdout.split()
    assert owners == ["metaflow"]


def test_rerun_resets_passwords_to_the_secrets(databases: Server, job):
    new = {"metaflow-password": "Metaflow-role-pw-0002", "airflow-password": "Airflow-role-pw-0002"}
    assert _bootstrap(databases, job, new).returncode == 0
    assert _bootstrap(databases, job, new).returncode == 0
    assert _can_connect(databases, "metaflow", new["metaflow-password"], "metaflow")
    assert not _can_connect(databases, "metaflow", PASSWORDS["metaflow-password"], "metaflow")
    assert _bootstrap(databases, job, PASSWORDS).returncode == 0


def test_wrong_admin_password_fails_with_psqls_reason(databases: Server, job):
    container, sql = job
    bad = dict(PASSWORDS)
    proc = subprocess.run(
        [str(databases.bin / "psql"), "--no-psqlrc", "--file", str(sql / "db_roles.sql")],
        env={**databases.env(ADMIN, "not-the-password"),
             **{f"MFHELM_METAFLOW_{k}": v for k, v in
                (("ROLE", "metaflow"), ("DB", "metaflow"), ("PASSWORD", bad["metaflow-password"]))}},
        capture_output=True, text=True)
    assert proc.returncode != 0
    assert "password authentication failed" in proc.stderr


def test_airflow_role_runs_airflows_own_migrations(databases: Server, job, tmp_path):
    airflow = shutil.which("airflow")
    if not airflow:
        pytest.skip("airflow not installed (tools.toml pins it; run `make test-tools`)")
    assert _bootstrap(databases, job, PASSWORDS).returncode == 0
    url = (f"postgresql://airflow:{PASSWORDS['airflow-password']}@{databases.host}:"
           f"{databases.port}/airflow")
    proc = subprocess.run([airflow, "db", "migrate"], capture_output=True, text=True,
                          env={**os.environ, "AIRFLOW_HOME": str(tmp_path),
                               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tables = databases.psql("airflow", PASSWORDS["airflow-password"], "airflow",
                            "SELECT count(*) FROM pg_tables WHERE tableowner = 'airflow'").stdout
    assert int(tables) > 30
    # And the next install's bootstrap leaves Airflow's tables to it.
    assert _bootstrap(databases, job, PASSWORDS).returncode == 0


def test_script_refuses_to_make_the_admin_an_application_role(databases: Server, job):
    container, _ = job
    forged = {**container, "env": [
        {"name": e["name"], "value": ADMIN} if e["name"] == "MFHELM_METAFLOW_ROLE" else e
        for e in container["env"]]}
    proc = _bootstrap(databases, (forged, job[1]), {**PASSWORDS, "metaflow-password": "x" * 20})
    assert proc.returncode == 3
    assert "may not be the admin" in proc.stderr
    assert _can_connect(databases, ADMIN, ADMIN_PASSWORD, "postgres")


def test_script_stops_before_any_change_when_the_admin_cannot_do_it_all(databases: Server, job):
    # A database the admin does not own (on Azure: one created by the
    # platform for another owner): revoking PUBLIC's access would silently do
    # nothing, so the script refuses, before creating any role.
    databases.psql(ADMIN, ADMIN_PASSWORD, "postgres", "CREATE ROLE someone_else")
    databases.psql(ADMIN, ADMIN_PASSWORD, "postgres", "GRANT someone_else TO mfadmin")
    databases.psql(ADMIN, ADMIN_PASSWORD, "postgres", "CREATE DATABASE foreign_db OWNER someone_else")
    databases.psql(ADMIN, ADMIN_PASSWORD, "postgres", "REVOKE someone_else FROM mfadmin")
    container, sql = job
    env = {e["name"]: e for e in container["env"]}
    for db, password, why in (("foreign_db", "x" * 20, "not owned by mfadmin"),
                              ("no_such_db", "x" * 20, "database no_such_db is missing"),
                              ("metaflow", "short", "missing or shorter than 16")):
        forged = dict(container, env=[
            {"name": "MFHELM_METAFLOW_DB", "value": db} if n == "MFHELM_METAFLOW_DB"
            else {"name": "MFHELM_METAFLOW_ROLE", "value": "newcomer"}
            if n == "MFHELM_METAFLOW_ROLE" else e for n, e in env.items()])
        proc = _bootstrap(databases, (forged, sql), {**PASSWORDS, "metaflow-password": password})
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert why in proc.stderr
        roles = databases.psql(ADMIN, ADMIN_PASSWORD, "postgres",
                               "SELECT count(*) FROM pg_roles WHERE rolname = 'newcomer'").stdout
        assert roles.strip() == "0"


def test_partitions_types_and_aggregates_are_handed_over(databases: Server, job):
    databases.psql(ADMIN, ADMIN_PASSWORD, "metaflow", """
        CREATE TABLE events (id int, at date) PARTITION BY RANGE (at);
        CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
        CREATE TYPE pair AS (a int, b int);
        CREATE TYPE level AS ENUM ('low', 'high');
        CREATE AGGREGATE total (int) (sfunc = int4pl, stype = int);
    """)
    assert _bootstrap(databases, job, PASSWORDS).returncode == 0
    left = databases.psql(ADMIN, ADMIN_PASSWORD, "metaflow", """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE nspname = 'public' AND relowner = 'mfadmin'::regrole
        UNION ALL SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE nspname = 'public' AND proowner = 'mfadmin'::regrole
        UNION ALL SELECT typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE nspname = 'public' AND typowner = 'mfadmin'::regrole""").stdout.split()
    assert left == []
