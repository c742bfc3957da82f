-- popgate warehouse schema, version 1.
-- Audit tables are append-only for the gateway's role: it may INSERT and
-- SELECT, never UPDATE or DELETE (grants below, and a trigger for everyone).

CREATE SCHEMA IF NOT EXISTS popgate;

CREATE TABLE popgate.audit_events (
    instance_id     text        NOT NULL,
    seq             bigint      NOT NULL,
    audit_id        uuid        NOT NULL UNIQUE,
    ts              timestamptz NOT NULL,
    request_id      text        NOT NULL,
    app_id          text,
    officer_id      text,
    officer_unit    text,
    operation       text        NOT NULL,
    purpose         text,
    case_ref        text,
    decision        text        NOT NULL,
    reason          text,
    citizen_key     text,
    fields          text[]      NOT NULL DEFAULT '{}',
    policy_version  bigint,
    upstream_status text,
    upstream_ms     integer,
    upstream_digest text,
    released_digest text,
    body            jsonb       NOT NULL,
    prev_hash       text        NOT NULL,
    hash            text        NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
CREATE INDEX audit_events_citizen ON popgate.audit_events (citizen_key, ts DESC);
CREATE INDEX audit_events_app_ts ON popgate.audit_events (app_id, ts DESC);
CREATE INDEX audit_events_ts ON popgate.audit_events (ts DESC);

CREATE TABLE popgate.audit_checkpoints (
    instance_id text        NOT NULL,
    seq         bigint      NOT NULL,
    head_hash   text        NOT NULL,
    ts          timestamptz NOT NULL,
    signed_ts   text        NOT NULL, -- the exact time string that was signed
    public_key  text        NOT NULL,
    signature   text        NOT NULL,
    PRIMARY KEY (instance_id, seq)
);

CREATE TABLE popgate.policy_versions (
    version      bigint      PRIMARY KEY,
    state        text        NOT NULL CHECK (state IN ('proposed', 'active', 'superseded', 'rejected')),
    files        jsonb       NOT NULL,
    author       text        NOT NULL,
    approver     text,
    reason       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    based_on     bigint
);
CREATE UNIQUE INDEX policy_versions_one_active ON popgate.policy_versions (state) WHERE state = 'active';

CREATE TABLE popgate.citizen_records (
    audit_id          uuid        PRIMARY KEY,
    citizen_key       text        NOT NULL,
    app_id            text        NOT NULL,
    purpose           text        NOT NULL,
    policy_version    bigint      NOT NULL,
    released_at       timestamptz NOT NULL,
    data_as_of        timestamptz,
    ward_code         text,
    ward_name         text,
    province_code     text,
    province_name     text,
    age_band          text,
    fields            jsonb       NOT NULL,
    retain_until      timestamptz NOT NULL
);
CREATE INDEX citizen_records_retain ON popgate.citizen_records (retain_until);

CREATE TABLE popgate.shipper_watermarks (
    instance_id text   PRIMARY KEY,
    delivered   bigint NOT NULL
);

CREATE FUNCTION popgate.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'popgate audit tables are append-only (% on %)', TG_OP, TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON popgate.audit_events
    FOR EACH ROW EXECUTE FUNCTION popgate.refuse_change();
CREATE TRIGGER audit_checkpoints_append_only
    BEFORE UPDATE OR DELETE ON popgate.audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION popgate.refuse_change();

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'popgate_gateway') THEN
        GRANT USAGE ON SCHEMA popgate TO popgate_gateway;
        GRANT SELECT, INSERT ON popgate.audit_events, popgate.audit_checkpoints TO popgate_gateway;
        GRANT SELECT, INSERT, UPDATE ON popgate.policy_versions TO popgate_gateway;
        GRANT SELECT, INSERT, DELETE ON popgate.citizen_records TO popgate_gateway;
        GRANT SELECT, INSERT, UPDATE ON popgate.shipper_watermarks TO popgate_gateway;
    END IF;
END;
$$;
