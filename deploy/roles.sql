-- The PostgreSQL roles of a popgate deployment, each with exactly what it
-- needs. Run once as a superuser, before the first migration, in the
-- warehouse database; set the passwords (or use certificate logins).
--
--   popgate_owner    owns the schema and runs the migrations
--                    (warehouse.admin_url, or `popgate warehouse migrate`);
--   popgate_gateway  what every instance runs as (warehouse.url): INSERT
--                    and SELECT on the audit tables, nothing that rewrites
--                    them; the migrations grant its rights table by table;
--   popgate_auditor  read-only, for `popgate audit verify` and reporting.

CREATE ROLE popgate_owner LOGIN PASSWORD 'change-me-owner';
CREATE ROLE popgate_gateway LOGIN PASSWORD 'change-me-gateway';
CREATE ROLE popgate_auditor LOGIN PASSWORD 'change-me-auditor';

GRANT CREATE ON DATABASE popgate TO popgate_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- After the first migration (the schema exists), the auditor reads it:
--   GRANT USAGE ON SCHEMA popgate TO popgate_auditor;
--   GRANT SELECT ON ALL TABLES IN SCHEMA popgate TO popgate_auditor;
--   ALTER DEFAULT PRIVILEGES FOR ROLE popgate_owner IN SCHEMA popgate
--       GRANT SELECT ON TABLES TO popgate_auditor;
