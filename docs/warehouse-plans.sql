-- The query plans of docs/warehouse.md: 5 million synthetic records over 24 past
-- months, then the month report, the purge and a citizen's records. Run it
-- against a throwaway demo's warehouse_admin_url with psql -f.
\timing off
-- 24 past months of partitions, 5 million records spread over them.
DO $$
DECLARE m date := date_trunc('month', now() AT TIME ZONE 'Asia/Ho_Chi_Minh')::date;
BEGIN
  FOR i IN 1..24 LOOP
    EXECUTE format('CREATE TABLE IF NOT EXISTS popgate.%I PARTITION OF popgate.citizen_records FOR VALUES FROM (%L) TO (%L)',
      'citizen_records_' || to_char(m - make_interval(months => i), 'YYYY_MM'), (m - make_interval(months => i))::date, (m - make_interval(months => i - 1))::date);
  END LOOP;
END $$;
INSERT INTO popgate.citizen_records (audit_id, citizen_key, app_id, purpose, policy_version, released_at, released_month,
    ward_code, ward_name, province_code, province_name, fields, retain_until)
SELECT gen_random_uuid(), md5(g::text), (ARRAY['mot-cua','y-te','ioc','dia-chi-so'])[1 + g % 4],
       (ARRAY['administrative-procedure','health-insurance','emergency-response','address-verification'])[1 + g % 4], 1,
       t, date_trunc('month', t AT TIME ZONE 'Asia/Ho_Chi_Minh')::date,
       (25747 + (g % 160))::text, 'Phường', '79', 'Thành phố Hồ Chí Minh', '{}',
       t + (ARRAY[interval '1825 days', interval '3650 days', interval '90 days', interval '365 days'])[1 + g % 4]
FROM (SELECT g, now() - (g % 700) * interval '1 day' - (g % 86400) * interval '1 second' AS t
      FROM generate_series(1, 5000000) g) s;
ANALYZE popgate.citizen_records;
SELECT count(*) AS partitions FROM pg_inherits WHERE inhparent = 'popgate.citizen_records'::regclass;
SELECT count(*) AS records FROM popgate.citizen_records;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON)
SELECT * FROM popgate.citizen_records_by_ward_month
WHERE month = (date_trunc('month', now() AT TIME ZONE 'Asia/Ho_Chi_Minh') - interval '3 months')::date;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON)
DELETE FROM popgate.citizen_records WHERE retain_until < now();
SELECT popgate.drop_expired_record_partitions() AS dropped;
EXPLAIN (COSTS OFF) SELECT * FROM popgate.citizen_records WHERE citizen_key = md5('42');
