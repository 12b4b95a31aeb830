-- Least privilege (issue 13, item 11(e)): the platform's runtime login reads and writes the CQOX tables and
-- never reshapes them. Vault's database engine issues two kinds of users: `cqox-migrator` users act as the
-- schema owner (this file, like every migration, runs as that owner) and `cqox-platform` users are members of
-- the NOLOGIN group `cqox_runtime` below, with DML only. Vault creates the group too, before it issues the
-- first runtime user; whichever comes first creates it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cqox_runtime') THEN
        CREATE ROLE cqox_runtime NOLOGIN;
    END IF;
END
$$;

-- No object creation in public for anyone but its owner (PostgreSQL 15's default; older templates granted it).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO cqox_runtime;

-- Tables, views and continuous aggregates of today: rows only. No TRUNCATE, REFERENCES or TRIGGER.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO cqox_runtime;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO cqox_runtime;

-- And of every later migration: objects the owner creates in public get the same grants with no GRANT in
-- their file (default privileges belong to the creating role, the owner every migration runs as).
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO cqox_runtime;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO cqox_runtime;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT EXECUTE ON FUNCTIONS TO cqox_runtime;

-- The audit trail is append-only for the application: it adds rows, it cannot rewrite or erase them.
REVOKE UPDATE, DELETE ON audit_log FROM cqox_runtime;
