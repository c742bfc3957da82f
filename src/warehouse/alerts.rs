//! Alerts (`popgate.alerts`), the watch list and what the alert rules read:
//! each instance's new events after the rules' watermark, and the counts a
//! rule needs for one officer, app or case. The rules themselves are in
//! `audit::alerts`. No citizen data leaves here in an alert: an alert names
//! an officer, an app, an instance and audit ids.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use serde::Serialize;
use time::OffsetDateTime;

use super::{Result, Warehouse};

/// An alert a rule raises; stored once per `dedup_key` (a later finding
/// with the same key adds its audit ids to the stored one).
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub rule: &'static str,
    pub dedup_key: String,
    pub officer_id: Option<String>,
    pub app_id: Option<String>,
    pub instance_id: Option<String>,
    pub summary: String,
    pub audit_ids: Vec<uuid::Uuid>,
}

/// An alert as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub id: uuid::Uuid,
    pub rule: String,
    #[serde(with = "time::serde::rfc3339")]
    pub raised_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    pub officer_id: Option<String>,
    pub app_id: Option<String>,
    pub instance_id: Option<String>,
    pub summary: String,
    pub audit_ids: Vec<uuid::Uuid>,
    pub state: String,
    pub resolved_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    pub note: Option<String>,
}

/// Filters of the alert list; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub rule: Option<String>,
    pub state: Option<String>,
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
}

/// At most this many audit ids are kept as an alert's evidence.
pub const MAX_EVIDENCE: i32 = 500;

const COLUMNS: &str = "id, rule, raised_at, updated_at, officer_id, app_id, instance_id, summary, audit_ids, state, resolved_by, resolved_at, note";

fn alert(r: &tokio_postgres::Row) -> Alert {
    Alert {
        id: r.get(0),
        rule: r.get(1),
        raised_at: r.get(2),
        updated_at: r.get(3),
        officer_id: r.get(4),
        app_id: r.get(5),
        instance_id: r.get(6),
        summary: r.get(7),
        audit_ids: r.get(8),
        state: r.get(9),
        resolved_by: r.get(10),
        resolved_at: r.get(11),
        note: r.get(12),
    }
}

const UPSERT: &str = "
INSERT INTO popgate.alerts (id, rule, dedup_key, officer_id, app_id, instance_id, summary, audit_ids)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (dedup_key) DO UPDATE SET
    audit_ids = (SELECT array_agg(DISTINCT x) FROM (
        SELECT unnest(popgate.alerts.audit_ids || EXCLUDED.audit_ids) AS x LIMIT 500) AS ids),
    summary = EXCLUDED.summary,
    updated_at = now()
RETURNING id, rule, raised_at, updated_at, officer_id, app_id, instance_id, summary, audit_ids, state,
          resolved_by, resolved_at, note, (xmax = 0) AS inserted";

/// Stores `a` within `tx`; the alert and whether it is new.
pub async fn raise_in(tx: &Transaction<'_>, a: &NewAlert) -> Result<(Alert, bool)> {
    let row = tx
        .query_one(
            UPSERT,
            &[
                &uuid::Uuid::now_v7(),
                &a.rule,
                &a.dedup_key,
                &a.officer_id,
                &a.app_id,
                &a.instance_id,
                &a.summary,
                &a.audit_ids,
            ],
        )
        .await?;
    Ok((alert(&row), row.get(13)))
}

impl Warehouse {
    /// Stores `a`; the alert and whether it is new.
    pub async fn raise_alert(&self, a: &NewAlert) -> Result<(Alert, bool)> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let out = raise_in(&tx, a).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// One page of alerts, newest first, after `cursor` (`raised_at`, `id`).
    pub async fn alerts(
        &self,
        f: &AlertFilter,
        cursor: Option<(OffsetDateTime, uuid::Uuid)>,
        limit: i64,
    ) -> Result<Vec<Alert>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM popgate.alerts
                     WHERE ($1::text IS NULL OR rule = $1) AND ($2::text IS NULL OR state = $2)
                       AND ($3::timestamptz IS NULL OR raised_at >= $3) AND ($4::timestamptz IS NULL OR raised_at < $4)
                       AND ($5::timestamptz IS NULL OR (raised_at, id) < ($5, $6))
                     ORDER BY raised_at DESC, id DESC LIMIT $7"
                ),
                &[
                    &f.rule,
                    &f.state,
                    &f.from,
                    &f.to,
                    &cursor.map(|c| c.0),
                    &cursor.map(|c| c.1),
                    &limit,
                ],
            )
            .await?;
        Ok(rows.iter().map(alert).collect())
    }

    /// Closes an open alert with a note; `None` when there is no such
    /// alert, `Some(false)` when it was already closed.
    pub async fn resolve_alert(
        &self,
        id: &uuid::Uuid,
        by: &str,
        note: &str,
    ) -> Result<Option<(Alert, bool)>> {
        let client = self.pool.get().await?;
        let updated = client
            .query_opt(
                &format!(
                    "UPDATE popgate.alerts SET state = 'resolved', resolved_by = $2, resolved_at = now(), note = $3, updated_at = now()
                     WHERE id = $1 AND state = 'open' RETURNING {COLUMNS}"
                ),
                &[id, &by, &note],
            )
            .await?;
        if let Some(row) = updated {
            return Ok(Some((alert(&row), true)));
        }
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM popgate.alerts WHERE id = $1"),
                &[id],
            )
            .await?;
        Ok(row.map(|r| (alert(&r), false)))
    }

    /// Alerts of the last day not yet sent to the webhook, oldest first.
    pub async fn unsent_alerts(&self, limit: i64) -> Result<Vec<Alert>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM popgate.alerts WHERE sent_at IS NULL AND raised_at > now() - interval '1 day'
                     ORDER BY raised_at, id LIMIT $1"
                ),
                &[&limit],
            )
            .await?;
        Ok(rows.iter().map(alert).collect())
    }

    /// Records that the webhook took an alert.
    pub async fn mark_alert_sent(&self, id: &uuid::Uuid) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute("UPDATE popgate.alerts SET sent_at = now() WHERE id = $1", &[id])
            .await?;
        Ok(())
    }

    /// Puts a citizen's pseudonym on the watch list; false when it was on it.
    pub async fn watch(&self, citizen_key: &str, reason: &str, by: &str) -> Result<bool> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "INSERT INTO popgate.watch_list (citizen_key, reason, added_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&citizen_key, &reason, &by],
            )
            .await?;
        Ok(n == 1)
    }

    /// Takes a pseudonym off the watch list; false when it was not on it.
    pub async fn unwatch(&self, citizen_key: &str) -> Result<bool> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "DELETE FROM popgate.watch_list WHERE citizen_key = $1",
                &[&citizen_key],
            )
            .await?;
        Ok(n == 1)
    }

    /// The watch list's entries, without their pseudonyms: how many, and
    /// each one's reason, author and date.
    pub async fn watch_list(&self) -> Result<Vec<(String, String, OffsetDateTime)>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT reason, added_by, added_at FROM popgate.watch_list ORDER BY added_at DESC",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }
}

/// One event as the rules read it.
#[derive(Debug, Clone)]
pub struct RuleEvent {
    pub seq: u64,
    pub audit_id: uuid::Uuid,
    pub ts: OffsetDateTime,
    pub kind: String,
    pub decision: String,
    pub http_status: Option<i64>,
    pub app_id: Option<String>,
    pub officer_id: Option<String>,
    pub operation: Option<String>,
    pub case_ref: Option<String>,
    pub citizen_key: Option<String>,
    pub subject_keys: Vec<String>,
}

/// The rules' reads and writes, within one transaction that holds the
/// rules' lock: one instance of a deployment runs them at a time.
pub struct RuleTx<'a> {
    pub tx: Transaction<'a>,
}

/// Granted outcome events of apps (no console actions).
const GRANTED: &str =
    "kind = 'outcome' AND decision = 'granted' AND operation IN ('lookup', 'verify', 'household')";

/// The HTTP status of a refusal (the rules read no other).
const DENIED_STATUS: &str = "CASE WHEN decision = 'denied' THEN http_status::bigint END";

/// The people an event's answer carried (older events: the citizen).
const PEOPLE: &str =
    "unnest(CASE WHEN cardinality(subject_keys) > 0 THEN subject_keys ELSE ARRAY[citizen_key] END)";

impl<'a> RuleTx<'a> {
    /// Begins, and takes the rules' lock; `None` when another instance
    /// holds it.
    pub async fn begin(client: &'a mut deadpool_postgres::Object) -> Result<Option<RuleTx<'a>>> {
        let tx = client.transaction().await?;
        let locked: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock(hashtext('popgate-alert-rules'))",
                &[],
            )
            .await?
            .get(0);
        Ok(locked.then_some(RuleTx { tx }))
    }

    pub async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }

    /// Every instance the shipper delivers for, with the rules' watermark.
    pub async fn watermarks(&self) -> Result<Vec<(String, u64)>> {
        Ok(self
            .tx
            .query(
                "SELECT s.instance_id, COALESCE(w.seq, 0) FROM popgate.shipper_watermarks s
                 LEFT JOIN popgate.alert_watermarks w USING (instance_id) ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
            .collect())
    }

    pub async fn set_watermark(&self, instance: &str, seq: u64) -> Result<()> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.tx
            .execute(
                "INSERT INTO popgate.alert_watermarks (instance_id, seq) VALUES ($1, $2)
                 ON CONFLICT (instance_id) DO UPDATE SET seq = EXCLUDED.seq",
                &[&instance, &seq],
            )
            .await?;
        Ok(())
    }

    /// The events of `instance` after `after`, in seq order: those among
    /// the next `limit` places of its chain from the first event after
    /// `after` (an instance's seqs are consecutive, so that is `limit`
    /// events unless the warehouse lacks some; a gap is stepped over).
    ///
    /// Bounded on both sides, so that the scan reads only what it returns:
    /// with `seq > $2 … LIMIT` alone, the statistics of a table that grows
    /// by thousands of rows a second lag behind it, the planner expects a
    /// few hundred rows after `after`, and its bitmap scan then read every
    /// event up to the chain's head to keep the first `limit` (at 12,000
    /// events a second, a tick of 5 s read its 60,000 events some fifteen
    /// times over: more of the warehouse's CPU than taking them in).
    pub async fn events_after(&self, instance: &str, after: u64, limit: i64) -> Result<Vec<RuleEvent>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = self
            .tx
            .query(
                &format!(
                    "SELECT seq, audit_id, ts, kind, decision, {DENIED_STATUS}, app_id, officer_id,
                            operation, case_ref, citizen_key, subject_keys
                     FROM popgate.audit_events
                     WHERE instance_id = $1 AND seq > $2
                       AND seq < (SELECT min(seq) FROM popgate.audit_events
                                  WHERE instance_id = $1 AND seq > $2) + $3
                     ORDER BY seq LIMIT $3"
                ),
                &[&instance, &after, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| RuleEvent {
                seq: r.get::<_, i64>(0).max(0) as u64,
                audit_id: r.get(1),
                ts: r.get(2),
                kind: r.get(3),
                decision: r.get(4),
                http_status: r.get(5),
                app_id: r.get(6),
                officer_id: r.get(7),
                operation: r.get(8),
                case_ref: r.get(9),
                citizen_key: r.get(10),
                subject_keys: r.get(11),
            })
            .collect())
    }

    /// The people (pseudonyms) every officer's granted requests through
    /// each app carried in `[from, to)`: one row per request and person,
    /// `(officer, app, person, audit id)`. One range scan of the hour by
    /// time, whatever the number of officers.
    pub async fn people_between(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<(String, String, String, uuid::Uuid)>> {
        Ok(self
            .tx
            .query(
                &format!(
                    "SELECT officer_id, app_id, k, audit_id
                     FROM popgate.audit_events, {PEOPLE} AS k
                     WHERE ts >= $1 AND ts < $2 AND {GRANTED}
                       AND officer_id IS NOT NULL AND app_id IS NOT NULL AND k IS NOT NULL"
                ),
                &[&from, &to],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    /// The usual levels of an app in `[from, to)`: the mean of the distinct
    /// people per active hour of each officer, and of every officer of the
    /// app together (the mean over all their active hours).
    pub async fn hourly_means(
        &self,
        app: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<(HashMap<String, f64>, f64)> {
        let rows = self
            .tx
            .query(
                &format!(
                    "SELECT officer_id, avg(n)::float8 FROM (
                        SELECT officer_id, date_trunc('hour', ts), count(DISTINCT k) AS n
                        FROM popgate.audit_events, {PEOPLE} AS k
                        WHERE app_id = $1 AND ts >= $2 AND ts < $3 AND {GRANTED} AND officer_id IS NOT NULL
                        GROUP BY 1, 2) AS hours
                     GROUP BY ROLLUP (officer_id)"
                ),
                &[&app, &from, &to],
            )
            .await?;
        let mut officers = HashMap::new();
        let mut whole = 0.0;
        for r in rows {
            let mean: Option<f64> = r.get(1);
            match r.get::<_, Option<String>>(0) {
                Some(officer) => {
                    officers.insert(officer, mean.unwrap_or(0.0));
                }
                None => whole = mean.unwrap_or(0.0),
            }
        }
        Ok((officers, whole))
    }

    /// An officer's requests refused by policy (403) through an app in
    /// `[from, to]`: their audit ids.
    pub async fn denials(
        &self,
        officer: &str,
        app: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<uuid::Uuid>> {
        Ok(self
            .tx
            .query(
                "SELECT audit_id FROM popgate.audit_events
                 WHERE officer_id = $1 AND app_id = $2 AND ts >= $3 AND ts <= $4 AND decision = 'denied'
                   AND kind = 'outcome' AND http_status = 403
                 ORDER BY ts LIMIT 500",
                &[&officer, &app, &from, &to],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// The citizens asked about under one case reference of an app in
    /// `[from, to]`, each with its latest request's time, and the first
    /// (at most [`MAX_EVIDENCE`]) of those requests.
    pub async fn case_citizens(
        &self,
        app: &str,
        case_ref: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<(Vec<(String, OffsetDateTime)>, Vec<(OffsetDateTime, uuid::Uuid)>)> {
        let citizens = self
            .tx
            .query(
                &format!(
                    "SELECT citizen_key, max(ts) FROM popgate.audit_events
                     WHERE case_ref = $1 AND app_id = $2 AND ts >= $3 AND ts <= $4 AND {GRANTED}
                       AND citizen_key IS NOT NULL
                     GROUP BY citizen_key"
                ),
                &[&case_ref, &app, &from, &to],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let requests = self
            .tx
            .query(
                &format!(
                    "SELECT ts, audit_id FROM popgate.audit_events
                     WHERE case_ref = $1 AND app_id = $2 AND ts >= $3 AND ts <= $4 AND {GRANTED}
                     ORDER BY ts LIMIT {MAX_EVIDENCE}"
                ),
                &[&case_ref, &app, &from, &to],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok((citizens, requests))
    }

    /// The pseudonyms on the watch list.
    pub async fn watched(&self) -> Result<std::collections::HashSet<String>> {
        Ok(self
            .tx
            .query("SELECT citizen_key FROM popgate.watch_list", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Forks the shippers recorded: `(instance, seq)`.
    pub async fn forks(&self) -> Result<Vec<(String, u64)>> {
        Ok(self
            .tx
            .query("SELECT instance_id, seq FROM popgate.audit_forks", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
            .collect())
    }

    pub async fn raise(&self, a: &NewAlert) -> Result<(Alert, bool)> {
        raise_in(&self.tx, a).await
    }
}
