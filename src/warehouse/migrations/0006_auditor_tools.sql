-- popgate warehouse schema, version 6: the auditors' tools.
--
-- disclosure_holds: an investigation's accesses left out of citizen reports
-- until a date. `until` is what was asked; `in_force_until` is what holds:
-- no later than `hold_without_approval` after the request unless a second
-- auditor approved. Lifting ends it at once. Every change is also an audit
-- event (`audit.hold-*`).
CREATE TABLE popgate.disclosure_holds (
    id             uuid        PRIMARY KEY,
    case_ref       text,
    app_id         text,
    purpose        text,
    until          date        NOT NULL,
    in_force_until date        NOT NULL,
    reason         text        NOT NULL,
    legal_basis    text        NOT NULL,
    created_by     text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    requested_by   text        NOT NULL,
    approved_by    text,
    approved_at    timestamptz,
    lifted_by      text,
    lifted_at      timestamptz,
    lift_reason    text,
    CHECK (case_ref IS NOT NULL OR (app_id IS NOT NULL AND purpose IS NOT NULL))
);

-- alerts: one row per finding of a rule, stored once (`dedup_key`), with
-- the audit ids that support it; no citizen data (officer and app only).
CREATE TABLE popgate.alerts (
    id           uuid        PRIMARY KEY,
    rule         text        NOT NULL,
    dedup_key    text        NOT NULL UNIQUE,
    raised_at    timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    officer_id   text,
    app_id       text,
    instance_id  text,
    summary      text        NOT NULL,
    audit_ids    uuid[]      NOT NULL DEFAULT '{}',
    state        text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved')),
    resolved_by  text,
    resolved_at  timestamptz,
    note         text,
    -- When the alert reached the security operations' webhook.
    sent_at      timestamptz
);
CREATE INDEX alerts_newest ON popgate.alerts (raised_at DESC, id DESC);

-- How far the rules have read each instance's chain.
CREATE TABLE popgate.alert_watermarks (
    instance_id text   PRIMARY KEY,
    seq         bigint NOT NULL
);

-- Citizens whose every access raises an alert, by pseudonym only.
CREATE TABLE popgate.watch_list (
    citizen_key text        PRIMARY KEY,
    reason      text        NOT NULL,
    added_by    text        NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now()
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'popgate_gateway') THEN
        GRANT SELECT, INSERT, UPDATE ON popgate.disclosure_holds, popgate.alerts,
            popgate.alert_watermarks TO popgate_gateway;
        GRANT SELECT, INSERT, DELETE ON popgate.watch_list TO popgate_gateway;
    END IF;
END;
$$;

-- The alert rules read one officer's, or one case's, recent events.
CREATE INDEX audit_events_officer_ts ON popgate.audit_events (officer_id, ts);
CREATE INDEX audit_events_case_ts ON popgate.audit_events (case_ref, ts) WHERE case_ref IS NOT NULL;
