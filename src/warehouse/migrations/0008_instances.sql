-- The instances of a deployment, each seen at its last heartbeat: when the
-- shared rate limits (Redis) cannot answer, each instance enforces its
-- share, every limit divided by the instances seen lately.
CREATE TABLE popgate.instances (
    instance_id text        PRIMARY KEY,
    seen_at     timestamptz NOT NULL
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'popgate_gateway') THEN
        GRANT SELECT, INSERT, UPDATE ON popgate.instances TO popgate_gateway;
    END IF;
END;
$$;
