-- popgate warehouse schema, version 5: a chain fork a shipper found (the
-- warehouse holds another event at a place of its instance's chain than
-- the instance's journal does) is recorded here, for `audit verify` to
-- name, since the shipper stops delivering at once.

CREATE TABLE popgate.audit_forks (
    instance_id   text        NOT NULL,
    seq           bigint      NOT NULL,
    warehouse_hash text       NOT NULL,
    journal_hash  text        NOT NULL,
    detected_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, seq)
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'popgate_gateway') THEN
        GRANT SELECT, INSERT ON popgate.audit_forks TO popgate_gateway;
    END IF;
END;
$$;
