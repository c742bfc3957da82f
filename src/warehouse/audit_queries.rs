//! Auditors' queries over `popgate.audit_events`: filtered search in keyset
//! pages (newest first, stable while events keep arriving), and a citizen's
//! access history by pseudonym.

use serde_json::Value;
use time::OffsetDateTime;

use super::stored::{self, stored_columns};
use super::{Result, Warehouse};

/// Filters of a search; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub citizen_key: Option<String>,
    pub app: Option<String>,
    pub officer: Option<String>,
    pub purpose: Option<String>,
    pub case_ref: Option<String>,
    pub decision: Option<String>,
    pub kind: Option<String>,
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
}

/// A position in the newest-first order: `(ts, instance_id, seq)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventKey {
    pub ts: OffsetDateTime,
    pub instance_id: String,
    pub seq: i64,
}

/// Where the warehouse record of an access says the citizen lived: the
/// 2025 ward and province, and the old ward when the source still coded
/// the address before the reform.
#[derive(Debug, Clone)]
pub struct Residence {
    pub ward: String,
    pub province: String,
    pub old_ward: Option<String>,
}

/// One event as the warehouse holds it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub key: EventKey,
    pub body: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// A person is found as an event's citizen, or among subjects that say more
/// than the citizen (the predicate of the partial index on `subject_keys`).
macro_rules! has_person {
    ($e:literal, $key:literal) => {
        concat!(
            "(", $e, "citizen_key = ", $key, " OR (", $e, "subject_keys <> '{}' AND ", $e,
            "subject_keys <> ARRAY[", $e, "citizen_key] AND ", $e, "subject_keys @> ARRAY[", $key, "::text]))"
        )
    };
}

const SEARCH: &str = concat!(
    "SELECT ",
    stored_columns!(),
    " FROM popgate.audit_events
WHERE ($1::text IS NULL OR ",
    has_person!("", "$1"),
    ")
  AND ($2::text IS NULL OR app_id = $2)
  AND ($3::text IS NULL OR officer_id = $3)
  AND ($4::text IS NULL OR purpose = $4)
  AND ($5::text IS NULL OR decision = $5)
  AND ($6::text IS NULL OR kind = $6)
  AND ($7::timestamptz IS NULL OR ts >= $7)
  AND ($8::timestamptz IS NULL OR ts < $8)
  AND ($9::timestamptz IS NULL OR (ts, instance_id, seq) < ($9, $10, $11))
  AND ($13::text IS NULL OR case_ref = $13)
ORDER BY ts DESC, instance_id DESC, seq DESC
LIMIT $12"
);

/// A citizen's granted accesses (as any subject), newest first, with the
/// accesses that a disclosure hold in force on `today` covers left out.
const CITIZEN_ACCESSES: &str = concat!(
    "SELECT ",
    stored_columns!(),
    ",
       r.ward_name, r.province_name, r.residence_old_ward_name
FROM popgate.audit_events e
LEFT JOIN LATERAL (
    SELECT ward_name, province_name, residence_old_ward_name FROM popgate.citizen_records
    WHERE audit_id = e.audit_id AND citizen_key = $1 LIMIT 1) r ON true
WHERE ",
    has_person!("e.", "$1"),
    "
  AND e.decision = 'granted' AND e.kind = 'outcome'
  AND ($2::timestamptz IS NULL OR e.ts >= $2)
  AND ($3::timestamptz IS NULL OR e.ts < $3)
  AND ($4::timestamptz IS NULL OR (e.ts, e.instance_id, e.seq) < ($4, $5, $6))
  AND NOT EXISTS (
      SELECT 1 FROM popgate.disclosure_holds h
      WHERE h.lifted_at IS NULL AND h.in_force_until > $7
        AND (h.case_ref IS NULL OR h.case_ref = e.case_ref)
        AND (h.app_id IS NULL OR h.app_id = e.app_id)
        AND (h.purpose IS NULL OR h.purpose = e.purpose))
ORDER BY e.ts DESC, e.instance_id DESC, e.seq DESC
LIMIT $8"
);

/// A row of [`stored::EVENT_COLUMNS`].
fn stored_event(r: &tokio_postgres::Row) -> StoredEvent {
    StoredEvent {
        key: EventKey {
            ts: r.get("ts"),
            instance_id: r.get("instance_id"),
            seq: r.get("seq"),
        },
        body: stored::hashed_body(r),
        prev_hash: r.get("prev_hash"),
        hash: r.get("hash"),
    }
}

impl Warehouse {
    /// One page of events matching `filter`, after `cursor`.
    pub async fn search_events(
        &self,
        filter: &EventFilter,
        cursor: Option<&EventKey>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                SEARCH,
                &[
                    &filter.citizen_key,
                    &filter.app,
                    &filter.officer,
                    &filter.purpose,
                    &filter.decision,
                    &filter.kind,
                    &filter.from,
                    &filter.to,
                    &cursor.map(|c| c.ts),
                    &cursor.map(|c| c.instance_id.clone()),
                    &cursor.map(|c| c.seq),
                    &limit,
                    &filter.case_ref,
                ],
            )
            .await?;
        Ok(rows.iter().map(stored_event).collect())
    }

    /// One page of a citizen's report: granted accesses to `citizen_key`
    /// in `[from, to)` after `cursor`, less those under a hold in force on
    /// `today`.
    pub async fn citizen_accesses(
        &self,
        citizen_key: &str,
        window: (Option<OffsetDateTime>, Option<OffsetDateTime>),
        cursor: Option<&EventKey>,
        today: time::Date,
        limit: i64,
    ) -> Result<Vec<(StoredEvent, Option<Residence>)>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                CITIZEN_ACCESSES,
                &[
                    &citizen_key,
                    &window.0,
                    &window.1,
                    &cursor.map(|c| c.ts),
                    &cursor.map(|c| c.instance_id.clone()),
                    &cursor.map(|c| c.seq),
                    &today,
                    &limit,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let residence = r.get::<_, Option<String>>("ward_name").map(|ward| Residence {
                    ward,
                    province: r.get::<_, Option<String>>("province_name").unwrap_or_default(),
                    old_ward: r.get("residence_old_ward_name"),
                });
                (stored_event(r), residence)
            })
            .collect())
    }

    /// One event by its audit id.
    pub async fn event_by_id(&self, audit_id: &uuid::Uuid) -> Result<Option<StoredEvent>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                concat!(
                    "SELECT ",
                    stored_columns!(),
                    " FROM popgate.audit_events WHERE audit_id = $1"
                ),
                &[audit_id],
            )
            .await?;
        Ok(row.as_ref().map(stored_event))
    }

    /// A connection for the verifier.
    pub async fn client(&self) -> Result<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }
}

/// A granted request as a replay of policy needs it: no citizen data.
#[derive(Debug, Clone)]
pub struct GrantedRequest {
    pub app: String,
    pub operation: crate::policy::Operation,
    pub purpose: String,
    pub policy_version: u64,
    pub fields: Vec<String>,
}

impl Warehouse {
    /// The granted app requests (outcome events) of `[from, to)`, oldest
    /// first, at most `limit`.
    pub async fn granted_requests(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<GrantedRequest>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT app_id, operation, purpose, policy_version, fields FROM popgate.audit_events
                 WHERE ts >= $1 AND ts < $2 AND decision = 'granted' AND kind = 'outcome'
                   AND app_id IS NOT NULL AND purpose IS NOT NULL AND policy_version IS NOT NULL
                 ORDER BY ts LIMIT $3",
                &[&from, &to, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let operation = match r.get::<_, String>(1).as_str() {
                    "lookup" => crate::policy::Operation::Lookup,
                    "verify" => crate::policy::Operation::Verify,
                    "household" => crate::policy::Operation::Household,
                    _ => return None,
                };
                Some(GrantedRequest {
                    app: r.get(0),
                    operation,
                    purpose: r.get(2),
                    policy_version: r.get::<_, i64>(3).max(0) as u64,
                    fields: r.get(4),
                })
            })
            .collect())
    }
}

/// Counts for the auditors' charts, by Vietnam's calendar day (UTC+07:00,
/// no daylight saving). No personal data: apps, officers, reasons, counts.
const ACCESSES_BY_DAY_AND_APP: &str = "
SELECT to_char(((ts AT TIME ZONE 'UTC') + interval '7 hours')::date, 'YYYY-MM-DD') AS day, app_id, count(*)
FROM popgate.audit_events
WHERE ts >= $1 AND kind = 'outcome' AND decision = 'granted' AND app_id IS NOT NULL
GROUP BY 1, 2 ORDER BY 1, 2";

const DENIALS_BY_DAY_AND_REASON: &str = "
SELECT to_char(((ts AT TIME ZONE 'UTC') + interval '7 hours')::date, 'YYYY-MM-DD') AS day,
       coalesce(reason, ''), count(*)
FROM popgate.audit_events
WHERE ts >= $1 AND kind = 'outcome' AND decision = 'denied'
GROUP BY 1, 2 ORDER BY 1, 2";

const OFFICERS_BY_DISTINCT_CITIZENS: &str = "
SELECT app_id, officer_id, count(DISTINCT k)
FROM popgate.audit_events, unnest(array_append(coalesce(subject_keys, '{}'), citizen_key)) AS k
WHERE ts >= $1 AND kind = 'outcome' AND decision = 'granted'
  AND officer_id IS NOT NULL AND k IS NOT NULL
GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT $2";

/// What the auditors' charts show.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AccessStats {
    /// (day, app, granted accesses)
    pub accesses_by_day_and_app: Vec<(String, String, i64)>,
    /// (day, reason, denials)
    pub denials_by_day_and_reason: Vec<(String, String, i64)>,
    /// (app, officer, distinct citizens)
    pub officers_by_distinct_citizens: Vec<(String, String, i64)>,
}

impl Warehouse {
    /// Accesses and denials since `days_since`, and the officers who saw
    /// the most distinct citizens since `officers_since` (at most `top`).
    pub async fn access_stats(
        &self,
        days_since: OffsetDateTime,
        officers_since: OffsetDateTime,
        top: i64,
    ) -> Result<AccessStats> {
        let client = self.pool.get().await?;
        let triples = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, String, i64)> {
            rows.iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, i64>(2)))
                .collect()
        };
        Ok(AccessStats {
            accesses_by_day_and_app: triples(client.query(ACCESSES_BY_DAY_AND_APP, &[&days_since]).await?),
            denials_by_day_and_reason: triples(
                client.query(DENIALS_BY_DAY_AND_REASON, &[&days_since]).await?,
            ),
            officers_by_distinct_citizens: triples(
                client
                    .query(OFFICERS_BY_DISTINCT_CITIZENS, &[&officers_since, &top])
                    .await?,
            ),
        })
    }
}
