-- popgate warehouse schema, version 4: policy versions are signed by the
-- instance that activates them; rollbacks are proposals that name the
-- version they copy; an emergency freeze is flagged and expires unless a
-- second admin confirms it.

ALTER TABLE popgate.policy_versions
    ADD COLUMN copy_of bigint,
    ADD COLUMN emergency boolean NOT NULL DEFAULT false,
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN signed_by_instance text,
    ADD COLUMN signed_by_key text,
    ADD COLUMN signature text;

ALTER TABLE popgate.policy_versions DROP CONSTRAINT policy_versions_state_check;
ALTER TABLE popgate.policy_versions ADD CONSTRAINT policy_versions_state_check
    CHECK (state IN ('proposed', 'active', 'superseded', 'rejected', 'expired'));
