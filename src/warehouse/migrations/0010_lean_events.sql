-- popgate warehouse schema, version 10: each field of an event once.
--
-- Until now every event was stored twice: as columns, and again as the
-- JSON body the gateway hashed, which PostgreSQL checked and compressed on
-- the way in. From this version an event is its columns alone; the fields
-- that lived only in the body get columns of their own (`kind`,
-- `http_status`, `intent_id`, `trace_id`, `details`), and the verifier
-- rebuilds the hashed body from the columns, so that a column changed on
-- its own no longer matches the chain. Rows written before keep the body
-- they were hashed with (`body` is then not null) and verify from it.
ALTER TABLE popgate.audit_events
    ADD COLUMN kind text,
    ADD COLUMN http_status integer,
    ADD COLUMN intent_id uuid,
    ADD COLUMN trace_id text,
    ADD COLUMN details json,
    ALTER COLUMN body DROP NOT NULL;
-- The one rewrite of history the schema allows: filling the new columns
-- from the bodies they were hashed with, in this migration's transaction.
ALTER TABLE popgate.audit_events DISABLE TRIGGER audit_events_append_only;
UPDATE popgate.audit_events SET
    kind = body->>'kind',
    http_status = (body->>'http_status')::integer,
    intent_id = (body->>'intent_id')::uuid,
    trace_id = body->>'trace_id',
    details = CASE WHEN json_typeof(body->'details') = 'null' THEN NULL ELSE body->'details' END;
ALTER TABLE popgate.audit_events ENABLE TRIGGER audit_events_append_only;
ALTER TABLE popgate.audit_events ALTER COLUMN kind SET NOT NULL;
DO $$
BEGIN
    ALTER TABLE popgate.audit_events ALTER COLUMN details SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no lz4: event details stay compressed with pglz';
END $$;

-- A citizen is found as the event's citizen or among its subjects. Most
-- answers carry one person, the citizen: their one subject key says
-- nothing `citizen_key` does not, yet cost a GIN entry per row (and an
-- empty list, as every intent and refusal has, one more). Only events whose
-- subjects say more are indexed; the searches ask for the same predicate.
DROP INDEX popgate.audit_events_subjects;
CREATE INDEX audit_events_subjects ON popgate.audit_events USING gin (subject_keys)
    WHERE subject_keys <> '{}' AND subject_keys <> ARRAY[citizen_key];

-- Purge reads records by the end of their retention, which follows the
-- order they were written in closely enough for a block range index.
DROP INDEX popgate.citizen_records_retain;
CREATE INDEX citizen_records_retain ON popgate.citizen_records USING brin (retain_until);
