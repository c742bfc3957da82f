-- popgate warehouse schema, version 3: every person an answer carried, and
-- the legal basis of each release.
-- `subjects` is the hashed event's list (pseudonym, role, fields);
-- `subject_keys` repeats its pseudonyms so that a citizen's accesses are
-- found whatever their role in the answer (citizen, household member,
-- relative). Each released person has their own warehouse record.

ALTER TABLE popgate.audit_events
    ADD COLUMN legal_basis text,
    ADD COLUMN subjects json,
    ADD COLUMN subject_keys text[] NOT NULL DEFAULT '{}';
CREATE INDEX audit_events_subjects ON popgate.audit_events USING gin (subject_keys);

ALTER TABLE popgate.citizen_records DROP CONSTRAINT citizen_records_pkey;
ALTER TABLE popgate.citizen_records ADD PRIMARY KEY (audit_id, citizen_key);
CREATE INDEX citizen_records_citizen ON popgate.citizen_records (citizen_key);
