//! The policy store: every policy version ever proposed or active, with its
//! full set of files, author, approver, reason and times. Exactly one
//! version is active; activations are announced on the `popgate_policy`
//! channel so that every instance swaps to the new version at once.

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{Result, Warehouse, WarehouseError};
use crate::policy::signature::{StoredVersion, VersionSignature};
use crate::policy::PolicyFiles;

/// Signs a version as the instance activating it (see `policy::signature`).
pub type Sign<'a> = &'a (dyn Fn(&StoredVersion) -> VersionSignature + Sync);

/// A transaction holding the policy store's lock: version numbers and the
/// one active version change under it only.
async fn locked(client: &mut deadpool_postgres::Object) -> Result<deadpool_postgres::Transaction<'_>> {
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE popgate.policy_versions IN EXCLUSIVE MODE")
        .await?;
    Ok(tx)
}

/// The active version's number, through any client or transaction.
async fn active_version_in(client: &impl tokio_postgres::GenericClient) -> Result<Option<i64>> {
    Ok(client
        .query_opt(
            "SELECT version FROM popgate.policy_versions WHERE state = 'active'",
            &[],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Tells every instance that `version` is active now (at commit).
async fn announce(tx: &tokio_postgres::Transaction<'_>, version: impl std::fmt::Display) -> Result<()> {
    tx.execute(&format!("NOTIFY {CHANNEL}, '{version}'"), &[]).await?;
    Ok(())
}

/// Records who signed `version`, and the approver the signature names.
async fn record_signature(
    tx: &tokio_postgres::Transaction<'_>,
    version: u64,
    approver: &str,
    signed: &VersionSignature,
) -> Result<()> {
    tx.execute(
        "UPDATE popgate.policy_versions SET approver = $2, signed_by_instance = $3, signed_by_key = $4, signature = $5
         WHERE version = $1",
        &[&(version as i64), &approver, &signed.instance, &signed.public_key, &signed.signature],
    )
    .await?;
    Ok(())
}

/// Every version that was ever applied, through any client.
pub async fn applied_versions(client: &impl tokio_postgres::GenericClient) -> Result<Vec<StoredVersion>> {
    let rows = client
        .query(
            "SELECT version FROM popgate.policy_versions WHERE state IN ('active', 'superseded', 'expired') ORDER BY version",
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        if let Some(v) = read_version(client, to_u64(r.get(0))).await? {
            out.push(v);
        }
    }
    Ok(out)
}

/// A version as stored, read through any client or transaction.
async fn read_version(
    client: &impl tokio_postgres::GenericClient,
    version: u64,
) -> Result<Option<StoredVersion>> {
    let Some(r) = client
        .query_opt(
            "SELECT version, files, author, approver, reason, based_on, emergency,
                    signed_by_instance, signed_by_key, signature
             FROM popgate.policy_versions WHERE version = $1",
            &[&(version as i64)],
        )
        .await?
    else {
        return Ok(None);
    };
    let signature = match (
        r.get::<_, Option<String>>(7),
        r.get::<_, Option<String>>(8),
        r.get::<_, Option<String>>(9),
    ) {
        (Some(instance), Some(public_key), Some(signature)) => Some(VersionSignature {
            instance,
            public_key,
            signature,
        }),
        _ => None,
    };
    Ok(Some(StoredVersion {
        version: to_u64(r.get(0)),
        files: files_from_json(r.get(1))?,
        author: r.get(2),
        approver: r.get(3),
        reason: r.get(4),
        based_on: r.get::<_, Option<i64>>(5).map(to_u64),
        emergency: r.get(6),
        signature,
    }))
}

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
    /// The version a rollback proposal copies.
    pub copy_of: Option<u64>,
    /// An emergency freeze (one admin, narrowing only).
    pub emergency: bool,
    /// When an unconfirmed freeze ends.
    pub expires_at: Option<String>,
    /// The instance whose key signed the version.
    pub signed_by: Option<String>,
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
    #[error("policy version {0} was never active ({1}): a rollback copies a version that was once approved and active")]
    NeverActive(u64, String),
    #[error("policy version {0} is not an emergency freeze awaiting confirmation")]
    NotAFreeze(u64),
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
                "SELECT version, state, author, approver, reason, created_at, activated_at, based_on,
                        copy_of, emergency, expires_at, signed_by_instance
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
                copy_of: r.get::<_, Option<i64>>(8).map(to_u64),
                emergency: r.get(9),
                expires_at: r.get::<_, Option<time::OffsetDateTime>>(10).map(rfc3339),
                signed_by: r.get(11),
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
        let tx = locked(&mut client).await?;
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
    /// active version, signed by `sign` (the approving instance). A
    /// proposal made against a version that is no longer active is refused
    /// (it would silently undo the change in between).
    pub async fn approve_policy(
        &self,
        version: u64,
        approver: &str,
        sign: Sign<'_>,
    ) -> Result<Result<(), StoreRefusal>> {
        let mut client = self.pool.get().await?;
        let tx = locked(&mut client).await?;
        let Some(row) = tx
            .query_opt(
                "SELECT state, author, based_on, files, reason FROM popgate.policy_versions WHERE version = $1",
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
        let active: Option<i64> = active_version_in(&*tx).await?;
        if let (Some(active), Some(based_on)) = (active, based_on) {
            if active != based_on {
                return Ok(Err(StoreRefusal::Stale(
                    version,
                    to_u64(based_on),
                    to_u64(active),
                )));
            }
        }
        let signed = sign(&StoredVersion {
            version,
            files: files_from_json(row.get(3))?,
            author,
            approver: Some(approver.to_owned()),
            reason: row.get(4),
            based_on: based_on.map(to_u64),
            emergency: false,
            signature: None,
        });
        tx.execute(
            "UPDATE popgate.policy_versions SET state = 'superseded' WHERE state = 'active'",
            &[],
        )
        .await?;
        tx.execute(
            "UPDATE popgate.policy_versions SET state = 'active', activated_at = now() WHERE version = $1",
            &[&(version as i64)],
        )
        .await?;
        record_signature(&tx, version, approver, &signed).await?;
        announce(&tx, version).await?;
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

    /// Proposes a copy of `to`, a version that was once active; like any
    /// proposal it needs a second admin's approval. Returns the proposal.
    pub async fn rollback_policy(
        &self,
        to: u64,
        author: &str,
        reason: &str,
    ) -> Result<Result<u64, StoreRefusal>> {
        let mut client = self.pool.get().await?;
        let tx = locked(&mut client).await?;
        let Some(row) = tx
            .query_opt(
                "SELECT state, files, activated_at IS NOT NULL AND signature IS NOT NULL
                 FROM popgate.policy_versions WHERE version = $1",
                &[&(to as i64)],
            )
            .await?
        else {
            return Ok(Err(StoreRefusal::NoSuchVersion(to)));
        };
        let (state, files, was_active): (String, Value, bool) = (row.get(0), row.get(1), row.get(2));
        if !(was_active && (state == "active" || state == "superseded")) {
            return Ok(Err(StoreRefusal::NeverActive(to, state)));
        }
        let active: Option<i64> = active_version_in(&*tx).await?;
        let next = next_version(&tx).await?;
        tx.execute(
            "INSERT INTO popgate.policy_versions (version, state, files, author, reason, based_on, copy_of)
             VALUES ($1, 'proposed', $2, $3, $4, $5, $6)",
            &[
                &next,
                &files,
                &author,
                &format!("rollback to version {to}: {reason}"),
                &active,
                &(to as i64),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(to_u64(next)))
    }

    /// Activates `files` at once as an emergency freeze by one admin (the
    /// caller has checked that it only narrows access), until `expires_at`
    /// unless a second admin confirms it. Signed by `sign`.
    pub async fn freeze_policy(
        &self,
        files: &PolicyFiles,
        author: &str,
        reason: &str,
        expires_at: time::OffsetDateTime,
        sign: Sign<'_>,
    ) -> Result<u64> {
        let mut client = self.pool.get().await?;
        let tx = locked(&mut client).await?;
        let active: Option<i64> = active_version_in(&*tx).await?;
        let next = next_version(&tx).await?;
        let signed = sign(&StoredVersion {
            version: to_u64(next),
            files: files.clone(),
            author: author.to_owned(),
            approver: None,
            reason: reason.to_owned(),
            based_on: active.map(to_u64),
            emergency: true,
            signature: None,
        });
        tx.execute(
            "UPDATE popgate.policy_versions SET state = 'superseded' WHERE state = 'active'",
            &[],
        )
        .await?;
        tx.execute(
            "INSERT INTO popgate.policy_versions (version, state, files, author, reason, based_on, activated_at,
                    emergency, expires_at, signed_by_instance, signed_by_key, signature)
             VALUES ($1, 'active', $2, $3, $4, $5, now(), true, $6, $7, $8, $9)",
            &[
                &next,
                &files_to_json(files),
                &author,
                &reason,
                &active,
                &expires_at,
                &signed.instance,
                &signed.public_key,
                &signed.signature,
            ],
        )
        .await?;
        announce(&tx, next).await?;
        tx.commit().await?;
        Ok(to_u64(next))
    }

    /// A second admin confirms the active emergency freeze `version`: it
    /// stays, signed anew with its approver.
    pub async fn confirm_freeze(
        &self,
        version: u64,
        approver: &str,
        sign: Sign<'_>,
    ) -> Result<Result<(), StoreRefusal>> {
        let mut client = self.pool.get().await?;
        let tx = locked(&mut client).await?;
        let Some(v) = read_version(&*tx, version).await? else {
            return Ok(Err(StoreRefusal::NoSuchVersion(version)));
        };
        let (state, expires): (String, Option<time::OffsetDateTime>) = tx
            .query_one(
                "SELECT state, expires_at FROM popgate.policy_versions WHERE version = $1",
                &[&(version as i64)],
            )
            .await
            .map(|r| (r.get(0), r.get(1)))?;
        if !(v.emergency && state == "active" && v.approver.is_none() && expires.is_some()) {
            return Ok(Err(StoreRefusal::NotAFreeze(version)));
        }
        if v.author == approver {
            return Ok(Err(StoreRefusal::SelfApproval));
        }
        let confirmed = StoredVersion {
            approver: Some(approver.to_owned()),
            signature: None,
            ..v
        };
        let signed = sign(&confirmed);
        tx.execute(
            "UPDATE popgate.policy_versions SET expires_at = NULL WHERE version = $1",
            &[&(version as i64)],
        )
        .await?;
        record_signature(&tx, version, approver, &signed).await?;
        announce(&tx, version).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Ends an unconfirmed freeze past its time: the version it froze is
    /// active again. Returns the version that is active afterwards, if a
    /// freeze ended.
    pub async fn expire_freezes(&self) -> Result<Option<u64>> {
        const DUE: &str = "SELECT 1 FROM popgate.policy_versions
             WHERE state = 'active' AND emergency AND approver IS NULL AND expires_at < now()";
        let mut client = self.pool.get().await?;
        // Every instance asks every few seconds: lock the store only when a
        // freeze is due (and look again under the lock).
        if client.query_opt(DUE, &[]).await?.is_none() {
            return Ok(None);
        }
        let tx = locked(&mut client).await?;
        let Some(row) = tx
            .query_opt(
                "SELECT version, based_on FROM popgate.policy_versions
                 WHERE state = 'active' AND emergency AND approver IS NULL AND expires_at < now()",
                &[],
            )
            .await?
        else {
            return Ok(None);
        };
        let (frozen, before): (i64, Option<i64>) = (row.get(0), row.get(1));
        let Some(before) = before else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE popgate.policy_versions SET state = 'expired' WHERE version = $1",
            &[&frozen],
        )
        .await?;
        tx.execute(
            "UPDATE popgate.policy_versions SET state = 'active' WHERE version = $1",
            &[&before],
        )
        .await?;
        announce(&tx, before).await?;
        tx.commit().await?;
        Ok(Some(to_u64(before)))
    }

    /// A store from before versions were signed (schema version 4): every
    /// version it applied is signed by `sign` once, when no version of the
    /// store carries a signature yet (so that history stays verifiable and
    /// can be rolled back to). Returns how many were.
    pub async fn adopt_unsigned_store(&self, sign: Sign<'_>) -> Result<usize> {
        let mut client = self.pool.get().await?;
        let tx = locked(&mut client).await?;
        let signed_any = tx
            .query_opt(
                "SELECT 1 FROM popgate.policy_versions WHERE signature IS NOT NULL LIMIT 1",
                &[],
            )
            .await?
            .is_some();
        if signed_any {
            return Ok(0);
        }
        let applied = applied_versions(&*tx).await?;
        for v in &applied {
            let signed = sign(v);
            tx.execute(
                "UPDATE popgate.policy_versions SET signed_by_instance = $2, signed_by_key = $3, signature = $4 WHERE version = $1",
                &[&(v.version as i64), &signed.instance, &signed.public_key, &signed.signature],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(applied.len())
    }

    /// Every version that was ever applied (active, superseded, expired).
    pub async fn applied_versions(&self) -> Result<Vec<StoredVersion>> {
        let client = self.pool.get().await?;
        applied_versions(&**client).await
    }

    /// One version with everything that vouches for it.
    pub async fn version(&self, version: u64) -> Result<Option<StoredVersion>> {
        let client = self.pool.get().await?;
        read_version(&**client, version).await
    }

    /// The active version number.
    pub async fn active_version(&self) -> Result<u64> {
        let client = self.pool.get().await?;
        match active_version_in(&**client).await? {
            Some(v) => Ok(to_u64(v)),
            None => Err(WarehouseError::NoActivePolicy),
        }
    }
}

impl Warehouse {
    /// The active version, if the store has one.
    pub async fn active_policy(&self) -> Result<Option<StoredVersion>> {
        let client = self.pool.get().await?;
        match active_version_in(&**client).await? {
            Some(v) => read_version(&**client, to_u64(v)).await,
            None => Ok(None),
        }
    }

    /// Makes `files` version 1, signed by `sign`, when the store holds no
    /// version at all. Returns whether it did.
    pub async fn seed_policy(&self, files: &PolicyFiles, author: &str, sign: Sign<'_>) -> Result<bool> {
        const REASON: &str = "initial import from the policy directory";
        let signed = sign(&StoredVersion {
            version: 1,
            files: files.clone(),
            author: author.to_owned(),
            approver: None,
            reason: REASON.to_owned(),
            based_on: None,
            emergency: false,
            signature: None,
        });
        let client = self.pool.get().await?;
        let inserted = client
            .execute(
                "INSERT INTO popgate.policy_versions (version, state, files, author, reason, activated_at,
                        signed_by_instance, signed_by_key, signature)
                 SELECT 1, 'active', $1, $2, $3, now(), $4, $5, $6
                 WHERE NOT EXISTS (SELECT 1 FROM popgate.policy_versions)
                 ON CONFLICT DO NOTHING",
                &[
                    &files_to_json(files),
                    &author,
                    &REASON,
                    &signed.instance,
                    &signed.public_key,
                    &signed.signature,
                ],
            )
            .await?;
        Ok(inserted == 1)
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
        let config = self.tls().config_for(self.url())?;
        let (client, notified) = match self.tls().connector_for_listen() {
            None => {
                let (client, connection) = config.connect(NoTls).await?;
                (client, forward_notifications(connection))
            }
            Some(tls) => {
                let (client, connection) = config.connect(tls).await?;
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
