//! The policy store: every policy version ever proposed or active, with its
//! full set of files, author, approver, reason and times. Exactly one
//! version is active; activations are announced on the `popgate_policy`
//! channel so that every instance swaps to the new version at once.

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{Result, Warehouse, WarehouseError};
use crate::policy::PolicyFiles;

/// The notification channel instances listen on.
pub const CHANNEL: &str = "popgate_policy";

/// One version's metadata.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: u64,
    pub state: String,
    pub author: String,
    pub approver: Option<String>,
    pub reason: String,
    pub created_at: String,
    pub activated_at: Option<String>,
    pub based_on: Option<u64>,
}

/// Why a store operation was refused; shown to the admin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreRefusal {
    #[error("policy version {0} does not exist")]
    NoSuchVersion(u64),
    #[error("policy version {0} is {1}, not a proposal awaiting approval")]
    NotProposed(u64, String),
    #[error("the author of a proposal cannot approve it; another policy admin must")]
    SelfApproval,
    #[error("proposal {0} was made against version {1}, but version {2} is active now; propose again")]
    Stale(u64, u64, u64),
}

/// The number the next version gets; call with the table locked.
async fn next_version(tx: &tokio_postgres::Transaction<'_>) -> Result<i64> {
    Ok(tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM popgate.policy_versions",
            &[],
        )
        .await?
        .get(0))
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A version's files as stored (`jsonb`).
fn files_to_json(files: &PolicyFiles) -> Value {
    Value::Object(
        files
            .iter()
            .map(|(path, text)| (path.clone(), Value::String(text.clone())))
            .collect(),
    )
}

/// A version's files read back.
fn files_from_json(doc: Value) -> Result<PolicyFiles> {
    serde_json::from_value(doc).map_err(|_| WarehouseError::Malformed("stored policy files".to_owned()))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

impl Warehouse {
    pub async fn policy_versions(&self) -> Result<Vec<VersionInfo>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT version, state, author, approver, reason, created_at, activated_at, based_on
                 FROM popgate.policy_versions ORDER BY version DESC",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| VersionInfo {
                version: to_u64(r.get(0)),
                state: r.get(1),
                author: r.get(2),
                approver: r.get(3),
                reason: r.get(4),
                created_at: rfc3339(r.get(5)),
                activated_at: r.get::<_, Option<time::OffsetDateTime>>(6).map(rfc3339),
                based_on: r.get::<_, Option<i64>>(7).map(to_u64),
            })
            .collect())
    }

    /// The files of one version.
    pub async fn policy_files(&self, version: u64) -> Result<Option<PolicyFiles>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT files FROM popgate.policy_versions WHERE version = $1",
                &[&(version as i64)],
            )
            .await?;
        row.map(|r| files_from_json(r.get::<_, Value>(0))).transpose()
    }

    /// Records a proposal; returns its version number.
    pub async fn propose_policy(
        &self,
        files: &PolicyFiles,
        author: &str,
        reason: &str,
        based_on: u64,
    ) -> Result<u64> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute("LOCK TABLE popgate.policy_versions IN EXCLUSIVE MODE")
            .await?;
        let next = next_version(&tx).await?;
        tx.execute(
            "INSERT INTO popgate.policy_versions (version, state, files, author, reason, based_on)
             VALUES ($1, 'proposed', $2, $3, $4, $5)",
            &[&next, &files_to_json(files), &author, &reason, &(based_on as i64)],
        )
        .await?;
        tx.commit().await?;
        Ok(to_u64(next))
    }

    /// Approves a proposal by another admin than its author and makes it the
    /// active version. A proposal made against a version that is no longer
    /// active is refused (it would silently undo the change in between).
    pub async fn approve_policy(&self, version: u64, approver: &str) -> Result<Result<(), StoreRefusal>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute("LOCK TABLE popgate.policy_versions IN EXCLUSIVE MODE")
            .await?;
        let Some(row) = tx
            .query_opt(
                "SELECT state, author, based_on FROM popgate.policy_versions WHERE version = $1",
                &[&(version as i64)],
            )
            .await?
        else {
            return Ok(Err(StoreRefusal::NoSuchVersion(version)));
        };
        let (state, author, based_on): (String, String, Option<i64>) = (row.get(0), row.get(1), row.get(2));
        if state != "proposed" {
            return Ok(Err(StoreRefusal::NotProposed(version, state)));
        }
        if author == approver {
            return Ok(Err(StoreRefusal::SelfApproval));
        }
        let active: Option<i64> = tx
            .query_opt(
                "SELECT version FROM popgate.policy_versions WHERE state = 'active'",
                &[],
            )
            .await?
            .map(|r| r.get(0));
        if let (Some(active), Some(based_on)) = (active, based_on) {
            if active != based_on {
                return Ok(Err(StoreRefusal::Stale(
                    version,
                    to_u64(based_on),
                    to_u64(active),
                )));
            }
        }
        tx.execute(
            "UPDATE popgate.policy_versions SET state = 'superseded' WHERE state = 'active'",
            &[],
        )
        .await?;
        tx.execute(
            "UPDATE popgate.policy_versions SET state = 'active', approver = $2, activated_at = now() WHERE version = $1",
            &[&(version as i64), &approver],
        )
        .await?;
        tx.execute(&format!("NOTIFY {CHANNEL}, '{version}'"), &[]).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Rejects a proposal.
    pub async fn reject_policy(&self, version: u64, by: &str) -> Result<Result<(), StoreRefusal>> {
        let client = self.pool.get().await?;
        let Some(row) = client
            .query_opt(
                "SELECT state FROM popgate.policy_versions WHERE version = $1",
                &[&(version as i64)],
            )
            .await?
        else {
            return Ok(Err(StoreRefusal::NoSuchVersion(version)));
        };
        let state: String = row.get(0);
        if state != "proposed" {
            return Ok(Err(StoreRefusal::NotProposed(version, state)));
        }
        client
            .execute(
                "UPDATE popgate.policy_versions SET state = 'rejected', approver = $2 WHERE version = $1 AND state = 'proposed'",
                &[&(version as i64), &by],
            )
            .await?;
        Ok(Ok(()))
    }

    /// Activates a copy of an earlier version as a new version.
    pub async fn rollback_policy(
        &self,
        to: u64,
        author: &str,
        reason: &str,
    ) -> Result<Result<u64, StoreRefusal>> {
        let Some(files) = self.policy_files(to).await? else {
            return Ok(Err(StoreRefusal::NoSuchVersion(to)));
        };
        let (version, _) = self
            .activate_policy(&files, author, &format!("rollback to version {to}: {reason}"))
            .await?;
        Ok(Ok(version))
    }

    /// The active version number.
    pub async fn active_version(&self) -> Result<u64> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT version FROM popgate.policy_versions WHERE state = 'active'",
                &[],
            )
            .await?;
        match row {
            Some(r) => Ok(to_u64(r.get(0))),
            None => Err(WarehouseError::NoActivePolicy),
        }
    }
}

impl Warehouse {
    /// The active policy version and its files, if the store has one.
    pub async fn active_policy(&self) -> Result<Option<(u64, PolicyFiles)>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT version, files FROM popgate.policy_versions WHERE state = 'active'",
                &[],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let version: i64 = row.get(0);
        let files: serde_json::Value = row.get(1);
        let files = files_from_json(files)?;
        Ok(Some((u64::try_from(version).unwrap_or_default(), files)))
    }

    /// Makes `files` version 1 when the store holds no version at all.
    /// Returns whether it did.
    pub async fn seed_policy(&self, files: &PolicyFiles, author: &str) -> Result<bool> {
        let client = self.pool.get().await?;
        let doc = files_to_json(files);
        let inserted = client
            .execute(
                "INSERT INTO popgate.policy_versions (version, state, files, author, reason, activated_at)
                 SELECT 1, 'active', $1, $2, 'initial import from the policy directory', now()
                 WHERE NOT EXISTS (SELECT 1 FROM popgate.policy_versions)
                 ON CONFLICT DO NOTHING",
                &[&doc, &author],
            )
            .await?;
        Ok(inserted == 1)
    }
}

impl Warehouse {
    /// Records `files` as a new active version (the previous one becomes
    /// superseded) in one transaction, unless they equal the active files.
    /// Returns the active version afterwards and whether it is new.
    pub async fn activate_policy(
        &self,
        files: &PolicyFiles,
        author: &str,
        reason: &str,
    ) -> Result<(u64, bool)> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute("LOCK TABLE popgate.policy_versions IN EXCLUSIVE MODE")
            .await?;
        let doc = files_to_json(files);
        let active = tx
            .query_opt(
                "SELECT version, files FROM popgate.policy_versions WHERE state = 'active'",
                &[],
            )
            .await?;
        if let Some(row) = &active {
            let current: serde_json::Value = row.get(1);
            if current == doc {
                let version: i64 = row.get(0);
                tx.commit().await?;
                return Ok((u64::try_from(version).unwrap_or_default(), false));
            }
        }
        let based_on: Option<i64> = active.as_ref().map(|r| r.get(0));
        let next = next_version(&tx).await?;
        tx.execute(
            "UPDATE popgate.policy_versions SET state = 'superseded' WHERE state = 'active'",
            &[],
        )
        .await?;
        tx.execute(
            "INSERT INTO popgate.policy_versions (version, state, files, author, approver, reason, activated_at, based_on)
             VALUES ($1, 'active', $2, $3, NULL, $4, now(), $5)",
            &[&next, &doc, &author, &reason, &based_on],
        )
        .await?;
        tx.execute(&format!("NOTIFY {}, '{next}'", CHANNEL), &[]).await?;
        tx.commit().await?;
        Ok((u64::try_from(next).unwrap_or_default(), true))
    }
}

/// A dedicated connection that listens on [`CHANNEL`]: each activation of
/// a policy version, by any instance, is a notification.
pub struct PolicyListener {
    // Kept so that the session (and its LISTEN) lives as long as this.
    _client: tokio_postgres::Client,
    notified: tokio::sync::mpsc::Receiver<()>,
}

/// Drives `connection`, passing on each notification, until it closes.
fn forward_notifications<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
) -> tokio::sync::mpsc::Receiver<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if matches!(message, AsyncMessage::Notification(_)) && tx.send(()).await.is_err() {
                return;
            }
        }
    });
    rx
}

impl Warehouse {
    /// Opens a connection of its own and `LISTEN`s on [`CHANNEL`].
    pub async fn listen_for_policy_changes(&self) -> Result<PolicyListener> {
        let (client, notified) = match self.tls().connector_for_listen() {
            None => {
                let (client, connection) = tokio_postgres::connect(self.url(), NoTls).await?;
                (client, forward_notifications(connection))
            }
            Some(tls) => {
                let (client, connection) = tokio_postgres::connect(self.url(), tls).await?;
                (client, forward_notifications(connection))
            }
        };
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        Ok(PolicyListener {
            _client: client,
            notified,
        })
    }
}

impl PolicyListener {
    /// Resolves at the next activation; an error once the connection is
    /// gone (open a new listener then). Cancel-safe.
    pub async fn next_change(&mut self) -> Result<()> {
        self.notified
            .recv()
            .await
            .ok_or_else(|| WarehouseError::Aborted("the listening connection closed".into()))
    }
}
