//! The provincial data warehouse in PostgreSQL (schema `popgate`): the only
//! module that writes SQL. It owns the embedded cluster ([`embedded`]), the
//! migrations (plain `.sql` files applied in order at start), the
//! connection pool, the policy store ([`policies`]), the shipper's
//! deliveries ([`delivery`]), the auditors' queries ([`audit_queries`]) and
//! the verifier's reads of the chains ([`chain`]). Every failure is a
//! [`WarehouseError`]; `api::problem` turns it into HTTP in one place.

pub mod alerts;
pub mod audit_queries;
pub mod chain;
pub mod delivery;
pub mod embedded;
pub mod holds;
pub mod policies;
pub mod stored;

use std::time::Duration;

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

/// Why the warehouse could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("no warehouse connection: {}", describe_pool_error(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    // Not a `source`: the text already carries the driver's cause, which
    // a report of the chain would otherwise print twice.
    #[error("{}", describe_db_error(.0))]
    Db(tokio_postgres::Error),
    /// A connection that could not be made, with where it was going.
    #[error("cannot connect to the warehouse at {at}: {}", db_cause(.cause))]
    Connect {
        at: String,
        cause: tokio_postgres::Error,
    },
    #[error("the warehouse holds data popgate cannot read: {0}")]
    Malformed(String),
    #[error("{0}")]
    Aborted(String),
    #[error("the warehouse URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(String),
    #[error("the policy store has no active version")]
    NoActivePolicy,
    #[error("chain fork: the warehouse holds event {seq} of this instance with another hash")]
    Fork { seq: u64 },
}

impl From<tokio_postgres::Error> for WarehouseError {
    fn from(e: tokio_postgres::Error) -> Self {
        WarehouseError::Db(e)
    }
}

/// `Result` of the warehouse's functions.
pub type Result<T, E = WarehouseError> = std::result::Result<T, E>;

impl WarehouseError {
    /// Whether trying again may help: the server not up yet, or gone for a
    /// moment. A refused login, a certificate that does not verify or a bad
    /// URL stays as it is.
    pub fn is_transient(&self) -> bool {
        let (WarehouseError::Db(e) | WarehouseError::Connect { cause: e, .. }) = self else {
            return matches!(self, WarehouseError::Pool(_));
        };
        if e.as_db_error().is_some() {
            return false;
        }
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            let tls = c.downcast_ref::<rustls::Error>().is_some()
                || c.downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
            if tls {
                return false;
            }
            cause = c.source();
        }
        true
    }

    /// Whether PostgreSQL refused a row because its key is already there.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, WarehouseError::Db(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION))
    }
}

/// A pool error with the driver's cause (deadpool's own text ends in
/// "db error").
fn describe_pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => describe_db_error(e),
        deadpool_postgres::PoolError::Timeout(_) => "timed out waiting for a connection".to_owned(),
        other => other.to_string(),
    }
}

/// A driver error with its cause: tokio-postgres's own text is often just
/// "db error" or "error connecting to server".
fn describe_db_error(e: &tokio_postgres::Error) -> String {
    format!("warehouse: {}", db_cause(e))
}

/// The server's message, or the driver's text with its cause.
fn db_cause(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Migrations in the order they are applied; each runs once, in one
/// transaction, recorded in `popgate.schema_migrations`.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "schema", include_str!("migrations/0001_schema.sql")),
    (
        2,
        "event body as json",
        include_str!("migrations/0002_event_body_json.sql"),
    ),
    (
        3,
        "subjects and legal basis",
        include_str!("migrations/0003_subjects_and_legal_basis.sql"),
    ),
    (
        4,
        "signed policy versions",
        include_str!("migrations/0004_signed_policy_versions.sql"),
    ),
    (5, "audit forks", include_str!("migrations/0005_audit_forks.sql")),
    (
        6,
        "auditor tools",
        include_str!("migrations/0006_auditor_tools.sql"),
    ),
    (
        7,
        "enriched records",
        include_str!("migrations/0007_enriched_records.sql"),
    ),
    (8, "instances", include_str!("migrations/0008_instances.sql")),
    (
        9,
        "lz4 for event bodies",
        include_str!("migrations/0009_lz4_bodies.sql"),
    ),
    (
        10,
        "each event field once",
        include_str!("migrations/0010_lean_events.sql"),
    ),
];

const POOL_SIZE: usize = 16;
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How the gateway reaches PostgreSQL: in clear (the embedded cluster on
/// loopback), or over TLS that verifies the server's certificate against a
/// CA and its name against the URL's host (`verify-full`).
#[derive(Clone, Default)]
pub enum WarehouseTls {
    #[default]
    Disable,
    VerifyFull(Arc<rustls::ClientConfig>),
}

impl std::fmt::Debug for WarehouseTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WarehouseTls::Disable => "disable",
            WarehouseTls::VerifyFull(_) => "verify-full",
        })
    }
}

impl WarehouseTls {
    /// TLS that trusts only the CA certificate(s) in `ca` (PEM).
    pub fn verify_full(ca: &std::path::Path) -> anyhow::Result<WarehouseTls> {
        Ok(WarehouseTls::VerifyFull(Arc::new(
            crate::tls::server_auth_client_config(ca)?,
        )))
    }

    pub(super) fn connector_for_listen(&self) -> Option<tokio_postgres_rustls::MakeRustlsConnect> {
        self.connector()
    }

    /// The connection settings of `url` under this TLS: with `verify-full`
    /// TLS is required, whatever the URL's `sslmode` says — never the
    /// driver's default `prefer`, which talks in clear to a server that
    /// offers no TLS.
    pub(super) fn config_for(&self, url: &str) -> Result<tokio_postgres::Config> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| WarehouseError::BadUrl(e.to_string()))?;
        if let WarehouseTls::VerifyFull(_) = self {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        Ok(config)
    }

    fn connector(&self) -> Option<tokio_postgres_rustls::MakeRustlsConnect> {
        match self {
            WarehouseTls::Disable => None,
            WarehouseTls::VerifyFull(config) => {
                Some(tokio_postgres_rustls::MakeRustlsConnect::new((**config).clone()))
            }
        }
    }
}

/// Where a URL leads, for error messages: `host:port, database D, role R`
/// (never the password).
pub fn destination(url: &str) -> String {
    let Ok(c) = url.parse::<tokio_postgres::Config>() else {
        return "an unreadable URL".to_owned();
    };
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = c
                .get_ports()
                .get(i)
                .or(c.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    format!(
        "{}, database {}, role {}",
        hosts.join(","),
        c.get_dbname().unwrap_or("(default)"),
        c.get_user().unwrap_or("(default)")
    )
}

/// One connection, its driver task spawned (in clear: the embedded
/// cluster, tests).
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    connect_with(url, &WarehouseTls::Disable).await
}

/// One connection with `tls`, its driver task spawned.
pub async fn connect_with(url: &str, tls: &WarehouseTls) -> Result<tokio_postgres::Client> {
    let drive = |result: std::result::Result<(), tokio_postgres::Error>| {
        if let Err(error) = result {
            tracing::debug!(%error, "warehouse connection closed");
        }
    };
    let at = |cause| WarehouseError::Connect {
        at: destination(url),
        cause,
    };
    let config = tls.config_for(url)?;
    match tls.connector() {
        None => {
            let (client, connection) = config.connect(NoTls).await.map_err(at)?;
            tokio::spawn(async move { drive(connection.await) });
            Ok(client)
        }
        Some(tls) => {
            let (client, connection) = config.connect(tls).await.map_err(at)?;
            tokio::spawn(async move { drive(connection.await) });
            Ok(client)
        }
    }
}

/// The migrations the warehouse records; `None` when it has no schema yet
/// (or this role may not read it).
async fn applied_versions(client: &tokio_postgres::Client) -> Result<Option<Vec<i32>>> {
    use tokio_postgres::error::SqlState;
    match client
        .query("SELECT version FROM popgate.schema_migrations", &[])
        .await
    {
        Ok(rows) => Ok(Some(rows.iter().map(|r| r.get(0)).collect())),
        Err(e)
            if [
                SqlState::UNDEFINED_TABLE,
                SqlState::INVALID_SCHEMA_NAME,
                SqlState::INSUFFICIENT_PRIVILEGE,
            ]
            .iter()
            .any(|c| e.code() == Some(c)) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Applies the migrations that have not run yet.
pub async fn migrate(admin_url: &str) -> Result<()> {
    migrate_with(admin_url, &WarehouseTls::Disable).await
}

/// Applies the migrations that have not run yet, connecting with `tls`.
pub async fn migrate_with(admin_url: &str, tls: &WarehouseTls) -> Result<()> {
    let mut client = connect_with(admin_url, tls).await?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    // A schema that has every migration already needs no DDL: an instance
    // with only the gateway's role starts on a warehouse another migrated.
    if let Some(applied) = applied_versions(&client).await? {
        if MIGRATIONS.iter().all(|m| applied.contains(&m.0)) {
            if let Some(newer) = applied.iter().find(|v| **v > latest) {
                tracing::warn!(
                    schema = newer,
                    this_build = latest,
                    "the warehouse schema is newer than this build"
                );
            }
            return Ok(());
        }
    }
    let refused = |e: tokio_postgres::Error| {
        if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            WarehouseError::Aborted(format!(
                "the warehouse schema is not at version {latest}, which this build needs, and {} may not change it: \
                 start one instance with warehouse.admin_url set to a role that may create tables (the schema's owner), \
                 then the others with the gateway's role only",
                destination(admin_url)
            ))
        } else {
            WarehouseError::Db(e)
        }
    };
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS popgate;
             CREATE TABLE IF NOT EXISTS popgate.schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(refused)?;
    for (version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        // Serialise concurrent starters on one database.
        tx.batch_execute("LOCK TABLE popgate.schema_migrations IN EXCLUSIVE MODE")
            .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM popgate.schema_migrations WHERE version = $1",
                &[version],
            )
            .await?;
        if done.is_none() {
            tx.batch_execute(sql).await.map_err(|e| {
                WarehouseError::Aborted(format!(
                    "migration {version} ({name}) failed: {}",
                    describe_db_error(&e)
                ))
            })?;
            tx.execute(
                "INSERT INTO popgate.schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await?;
            tracing::info!(version, name, "applied warehouse migration");
        }
        tx.commit().await?;
    }
    Ok(())
}

/// The gateway's pool of warehouse connections.
#[derive(Clone)]
pub struct Warehouse {
    pool: Pool,
    url: String,
    tls: WarehouseTls,
}

impl Warehouse {
    /// A pool reaching `url` in clear.
    pub fn new(url: &str) -> Result<Warehouse> {
        Warehouse::with_tls(url, WarehouseTls::Disable)
    }

    /// A pool reaching `url` with `tls`.
    pub fn with_tls(url: &str, tls: WarehouseTls) -> Result<Warehouse> {
        let config = tls.config_for(url)?;
        let settings = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls.connector() {
            None => Manager::from_config(config, NoTls, settings),
            Some(connector) => Manager::from_config(config, connector, settings),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(CHECK_TIMEOUT))
            .create_timeout(Some(CHECK_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| WarehouseError::Aborted(format!("cannot build the warehouse pool: {e}")))?;
        Ok(Warehouse {
            pool,
            url: url.to_owned(),
            tls,
        })
    }

    /// Another pool to the same warehouse, the same way (for a task that
    /// drives its own connections).
    pub fn another_pool(&self) -> Result<Warehouse> {
        Warehouse::with_tls(&self.url, self.tls.clone())
    }

    /// How this pool reaches the warehouse.
    pub fn tls(&self) -> &WarehouseTls {
        &self.tls
    }

    /// Whether the warehouse answers a trivial query right now.
    pub async fn is_up(&self) -> bool {
        let check = async {
            let client = self.pool.get().await.ok()?;
            client.query_one("SELECT 1", &[]).await.ok()
        };
        matches!(tokio::time::timeout(CHECK_TIMEOUT, check).await, Ok(Some(_)))
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The URL this pool connects to (for dedicated connections).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Warehouse {
    /// Makes the record partitions of this month and the next two, deletes
    /// the records whose retention has passed (by each partition's
    /// `retain_until` index) and drops past months' partitions left empty;
    /// returns how many records it deleted.
    pub async fn purge_expired_records(&self) -> Result<u64> {
        let client = self.pool.get().await?;
        client
            .execute("SELECT popgate.prepare_record_partitions(2)", &[])
            .await?;
        let deleted = client
            .execute(
                "DELETE FROM popgate.citizen_records WHERE retain_until < now()",
                &[],
            )
            .await?;
        client
            .execute("SELECT popgate.drop_expired_record_partitions()", &[])
            .await?;
        Ok(deleted)
    }
}

/// Records that `instance_id` is alive and answers how many instances were
/// seen within `within` (itself included).
const HEARTBEAT: &str = "
INSERT INTO popgate.instances (instance_id, seen_at) VALUES ($1, now())
ON CONFLICT (instance_id) DO UPDATE SET seen_at = now()";
const LIVE_INSTANCES: &str =
    "SELECT count(*) FROM popgate.instances WHERE seen_at > now() - make_interval(secs => $1)";

impl Warehouse {
    /// This instance's heartbeat; the number of live instances.
    pub async fn heartbeat(&self, instance_id: &str, within: std::time::Duration) -> Result<u32> {
        let client = self.pool.get().await?;
        client.execute(HEARTBEAT, &[&instance_id]).await?;
        let row = client.query_one(LIVE_INSTANCES, &[&within.as_secs_f64()]).await?;
        Ok(u32::try_from(row.get::<_, i64>(0)).unwrap_or(u32::MAX).max(1))
    }
}
