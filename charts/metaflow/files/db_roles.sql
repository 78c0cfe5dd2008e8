-- Run by psql as the server's admin (the db-bootstrap Job that `mfhelm
-- install` starts on the azure profile, then deletes with the admin's
-- password). Gives each application a login role that owns its own database's
-- objects and cannot connect to the other's. Idempotent: every install runs it,
-- resets the passwords to the ones kept in the cluster's Secrets and hands the
-- role whatever an admin created in its database (earlier installs ran the
-- migrations as the admin).
--
-- Input, from the environment only (never argv, never echoed):
--   MFHELM_METAFLOW_ROLE, MFHELM_METAFLOW_DB, MFHELM_METAFLOW_PASSWORD
--   MFHELM_AIRFLOW_ROLE, MFHELM_AIRFLOW_DB, MFHELM_AIRFLOW_PASSWORD (with Airflow)
-- and libpq's PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE for the admin.
\set ON_ERROR_STOP on
\set QUIET on
SET client_min_messages = warning;

\getenv app_role MFHELM_METAFLOW_ROLE
\getenv app_db MFHELM_METAFLOW_DB
\getenv app_password MFHELM_METAFLOW_PASSWORD
\ir db_role.sql

\getenv airflow_role MFHELM_AIRFLOW_ROLE
\if :{?airflow_role}
\set app_role :airflow_role
\getenv app_db MFHELM_AIRFLOW_DB
\getenv app_password MFHELM_AIRFLOW_PASSWORD
\ir db_role.sql
\endif
\echo db roles ready
