//! Disclosure holds (`popgate.disclosure_holds`): which accesses citizen
//! reports leave out, and until when. The rules of a hold (who may approve,
//! how long without approval) are the audit surface's; this file reads and
//! writes rows.

use serde::Serialize;
use time::{Date, OffsetDateTime};

use super::{Result, Warehouse};

/// One hold as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    pub id: uuid::Uuid,
    pub case_ref: Option<String>,
    pub app: Option<String>,
    pub purpose: Option<String>,
    /// What was asked.
    pub until: Date,
    /// What is in force: `until` once approved, else capped.
    pub in_force_until: Date,
    pub reason: String,
    pub legal_basis: String,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who asked for the current `until` (the creator or the last extender).
    pub requested_by: String,
    pub approved_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub approved_at: Option<OffsetDateTime>,
    pub lifted_by: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub lifted_at: Option<OffsetDateTime>,
    pub lift_reason: Option<String>,
}

const COLUMNS: &str = "id, case_ref, app_id, purpose, until, in_force_until, reason, legal_basis, created_by, created_at, requested_by, approved_by, approved_at, lifted_by, lifted_at, lift_reason";

fn hold(r: &tokio_postgres::Row) -> Hold {
    Hold {
        id: r.get(0),
        case_ref: r.get(1),
        app: r.get(2),
        purpose: r.get(3),
        until: r.get(4),
        in_force_until: r.get(5),
        reason: r.get(6),
        legal_basis: r.get(7),
        created_by: r.get(8),
        created_at: r.get(9),
        requested_by: r.get(10),
        approved_by: r.get(11),
        approved_at: r.get(12),
        lifted_by: r.get(13),
        lifted_at: r.get(14),
        lift_reason: r.get(15),
    }
}

impl Warehouse {
    /// Stores a new hold.
    pub async fn insert_hold(&self, h: &Hold) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO popgate.disclosure_holds (id, case_ref, app_id, purpose, until, in_force_until, reason, legal_basis, created_by, created_at, requested_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[&h.id, &h.case_ref, &h.app, &h.purpose, &h.until, &h.in_force_until, &h.reason, &h.legal_basis, &h.created_by, &h.created_at, &h.requested_by],
            )
            .await?;
        Ok(())
    }

    /// Writes a hold's changeable columns (dates, approval, lifting).
    pub async fn update_hold(&self, h: &Hold) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE popgate.disclosure_holds SET until = $2, in_force_until = $3, requested_by = $4,
                        approved_by = $5, approved_at = $6, lifted_by = $7, lifted_at = $8, lift_reason = $9
                 WHERE id = $1",
                &[
                    &h.id,
                    &h.until,
                    &h.in_force_until,
                    &h.requested_by,
                    &h.approved_by,
                    &h.approved_at,
                    &h.lifted_by,
                    &h.lifted_at,
                    &h.lift_reason,
                ],
            )
            .await?;
        Ok(())
    }

    /// One hold.
    pub async fn hold(&self, id: &uuid::Uuid) -> Result<Option<Hold>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM popgate.disclosure_holds WHERE id = $1"),
                &[id],
            )
            .await?;
        Ok(row.as_ref().map(hold))
    }

    /// Every hold, newest first.
    pub async fn holds(&self) -> Result<Vec<Hold>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM popgate.disclosure_holds ORDER BY created_at DESC, id DESC"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(hold).collect())
    }
}
