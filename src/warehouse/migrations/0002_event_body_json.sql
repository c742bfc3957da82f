-- popgate warehouse schema, version 2.
-- An event's body is kept as the JSON text the gateway hashed (`json`)
-- rather than re-encoded as `jsonb`. PostgreSQL then only checks the text
-- on the way in, instead of building a binary tree and sorting its keys for
-- every row; that was the largest part of shipping's cost in the
-- warehouse. `body->>'kind'` and the verifier read it as before.

ALTER TABLE popgate.audit_events ALTER COLUMN body TYPE json USING body::json;
