-- One application's role, included by db_roles.sql with app_role, app_db and
-- app_password set. Each step is safe to repeat; every check comes before
-- the first change.
SELECT :'app_role' = current_user AS is_admin \gset
\if :is_admin
DO $$ BEGIN RAISE EXCEPTION 'the application role may not be the admin running this script'; END $$;
\endif
\if :{?app_password}
\else
\set app_password ''
\endif
SELECT length(:'app_password') < 16 AS weak_password \gset
\if :weak_password
DO $$ BEGIN RAISE EXCEPTION 'the application role''s password is missing or shorter than 16 characters'; END $$;
\endif
-- Without owning the database (directly or through a role), the admin could
-- neither revoke PUBLIC's access nor grant the role its schema: fail loudly.
SELECT EXISTS (SELECT FROM pg_catalog.pg_database
                WHERE datname = :'app_db' AND pg_catalog.pg_has_role(datdba, 'USAGE'))
       AS owns_db \gset
\if :owns_db
\else
SELECT set_config('mfhelm.why', format(
         'database %s is missing or not owned by %s (or a role it belongs to)',
         :'app_db', current_user), false) AS why \gset
DO $$ BEGIN RAISE EXCEPTION '%', current_setting('mfhelm.why'); END $$;
\endif

SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'app_role') AS role_missing \gset
\if :role_missing
CREATE ROLE :"app_role" LOGIN;
\endif
ALTER ROLE :"app_role" WITH LOGIN NOCREATEDB NOCREATEROLE PASSWORD :'app_password';
-- Membership lets the admin hand objects over (ALTER ... OWNER TO needs it).
GRANT :"app_role" TO CURRENT_USER;

-- Only this role (and the admin, who owns the database) may connect.
REVOKE ALL ON DATABASE :"app_db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"app_db" TO :"app_role";

\connect :"app_db"
SET client_min_messages = warning;
GRANT USAGE, CREATE ON SCHEMA public TO :"app_role";
SELECT oid AS admin_oid FROM pg_catalog.pg_roles WHERE rolname = current_user \gset

-- What the admin made here becomes the role's: migrations alter these tables
-- and the UI backend replaces trigger functions and drops triggers, which
-- only an owner may do. Sequences owned by a column move with their table.
SELECT format('ALTER %s %I.%I OWNER TO %I',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                             WHEN 'c' THEN 'TYPE' ELSE 'TABLE' END,
              n.nspname, c.relname, :'app_role')
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relowner = :admin_oid
   AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
   AND NOT (c.relkind = 'S' AND EXISTS (
         SELECT FROM pg_catalog.pg_depend d
          WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
            AND d.deptype IN ('a', 'i')))
\gexec
SELECT format('ALTER %s %s OWNER TO %I',
              CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE'
                             ELSE 'FUNCTION' END,
              p.oid::regprocedure, :'app_role')
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'public' AND p.proowner = :admin_oid AND p.prokind IN ('f', 'p', 'a')
\gexec
SELECT format('ALTER %s %I.%I OWNER TO %I',
              CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
              n.nspname, t.typname, :'app_role')
  FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname = 'public' AND t.typowner = :admin_oid AND t.typtype IN ('e', 'd', 'r')
\gexec
