-- popgate warehouse schema, version 7: the enriched record of every
-- released person, partitioned by month of release.
--
-- citizen_records is now partitioned by `released_month` (the month of
-- release in Vietnam time), one partition a month and a default one for
-- anything else. The province's reporting (counts by ward, month and
-- purpose) reads one month's partition; the retention purge deletes by the
-- `retain_until` index of each partition and drops a past month's partition
-- once every row in it has expired. Partitions are made ahead by
-- popgate.prepare_record_partitions(), which the gateway calls at start and
-- with every purge (it runs with the owner's rights: the gateway's own role
-- creates and drops no table).

ALTER TABLE popgate.citizen_records RENAME TO citizen_records_v6;
ALTER INDEX popgate.citizen_records_retain RENAME TO citizen_records_v6_retain;
ALTER INDEX popgate.citizen_records_citizen RENAME TO citizen_records_v6_citizen;

CREATE TABLE popgate.citizen_records (
    audit_id                    uuid        NOT NULL,
    citizen_key                 text        NOT NULL,
    app_id                      text        NOT NULL,
    purpose                     text        NOT NULL,
    legal_basis                 text,
    policy_version              bigint      NOT NULL,
    released_at                 timestamptz NOT NULL,
    released_month              date        NOT NULL,
    data_as_of                  timestamptz,
    -- The residence (current, else permanent) as 2025 units.
    ward_code                   text,
    ward_name                   text,
    province_code               text,
    province_name               text,
    -- Its pre-reform coding, when the source used it.
    residence_old_province_code text,
    residence_old_province_name text,
    residence_old_district_code text,
    residence_old_district_name text,
    residence_old_ward_code     text,
    residence_old_ward_name     text,
    residence_ambiguous         boolean     NOT NULL DEFAULT false,
    -- The permanent address (thường trú), likewise.
    permanent_ward_code         text,
    permanent_ward_name         text,
    permanent_province_code     text,
    permanent_province_name     text,
    permanent_old_province_code text,
    permanent_old_province_name text,
    permanent_old_district_code text,
    permanent_old_district_name text,
    permanent_old_ward_code     text,
    permanent_old_ward_name     text,
    permanent_ambiguous         boolean     NOT NULL DEFAULT false,
    region                      text,
    age_band                    text,
    sex                         text,
    household_size              integer,
    household_role              text,
    fields                      jsonb       NOT NULL,
    retain_until                timestamptz NOT NULL,
    PRIMARY KEY (audit_id, citizen_key, released_month)
) PARTITION BY RANGE (released_month);

CREATE TABLE popgate.citizen_records_default PARTITION OF popgate.citizen_records DEFAULT;
CREATE INDEX citizen_records_retain ON popgate.citizen_records (retain_until);
CREATE INDEX citizen_records_citizen ON popgate.citizen_records (citizen_key);

-- Makes this month's partition and the next `ahead` months'; returns how
-- many it made.
CREATE FUNCTION popgate.prepare_record_partitions(ahead integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = popgate, pg_temp AS $$
DECLARE
    first date := date_trunc('month', now() AT TIME ZONE 'Asia/Ho_Chi_Minh')::date;
    m date;
    made integer := 0;
BEGIN
    FOR i IN 0..greatest(ahead, 0) LOOP
        m := (first + make_interval(months => i))::date;
        IF to_regclass(format('popgate.citizen_records_%s', to_char(m, 'YYYY_MM'))) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE popgate.%I PARTITION OF popgate.citizen_records FOR VALUES FROM (%L) TO (%L)',
                'citizen_records_' || to_char(m, 'YYYY_MM'), m, (m + interval '1 month')::date);
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END;
$$;

-- Drops the partitions of past months whose every row has expired;
-- returns how many it dropped.
CREATE FUNCTION popgate.drop_expired_record_partitions() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = popgate, pg_temp AS $$
DECLARE
    part regclass;
    bound date;
    dropped integer := 0;
    live boolean;
BEGIN
    FOR part, bound IN
        SELECT c.oid::regclass,
               substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([0-9-]+)''\)')::date
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'popgate.citizen_records'::regclass
    LOOP
        CONTINUE WHEN bound IS NULL OR bound > (now() AT TIME ZONE 'Asia/Ho_Chi_Minh')::date;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE retain_until >= now())', part) INTO live;
        IF NOT live THEN
            EXECUTE format('DROP TABLE %s', part);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END;
$$;

SELECT popgate.prepare_record_partitions(2);

INSERT INTO popgate.citizen_records (audit_id, citizen_key, app_id, purpose, policy_version, released_at,
        released_month, data_as_of, ward_code, ward_name, province_code, province_name, age_band, fields, retain_until)
    SELECT audit_id, citizen_key, app_id, purpose, policy_version, released_at,
           date_trunc('month', released_at AT TIME ZONE 'Asia/Ho_Chi_Minh')::date, data_as_of,
           ward_code, ward_name, province_code, province_name, age_band, fields, retain_until
    FROM popgate.citizen_records_v6;
DROP TABLE popgate.citizen_records_v6;

-- The counts the province's shared reporting needs, with no personal data:
-- filter on `month` and only that month's partition is read.
CREATE VIEW popgate.citizen_records_by_ward_month AS
    SELECT released_month AS month, province_code, province_name, ward_code, ward_name, app_id, purpose,
           count(*) AS records, count(DISTINCT citizen_key) AS citizens
    FROM popgate.citizen_records
    GROUP BY released_month, province_code, province_name, ward_code, ward_name, app_id, purpose;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'popgate_gateway') THEN
        GRANT SELECT, INSERT, DELETE ON popgate.citizen_records TO popgate_gateway;
        GRANT SELECT ON popgate.citizen_records_by_ward_month TO popgate_gateway;
        -- An instance with only this role reads the schema's version, and
        -- starts without DDL when it is current.
        GRANT SELECT ON popgate.schema_migrations TO popgate_gateway;
        GRANT EXECUTE ON FUNCTION popgate.prepare_record_partitions(integer),
            popgate.drop_expired_record_partitions() TO popgate_gateway;
    END IF;
END;
$$;
REVOKE EXECUTE ON FUNCTION popgate.prepare_record_partitions(integer), popgate.drop_expired_record_partitions() FROM PUBLIC;
