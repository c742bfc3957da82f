//! The HTTP surfaces of the gateway — the app API on the mTLS listener
//! ([`app`]) and the ops listener ([`ops`]) — and [`start`], which brings a
//! whole gateway up from a [`Config`]: warehouse, policy, TLS, upstream
//! client, listeners.

pub mod admin;
pub mod app;
pub mod auditor;
pub mod ops;
pub mod problem;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::checkpoint::Signer;
use crate::audit::event::{AuditEvent, EventKind, Pseudonymiser};
use crate::audit::journal::{Journal, JournalSettings};
use crate::audit::shipper::{Shipper, ShipperSettings};
use crate::auth::token::TokenVerifier;
use crate::config::Config;
use crate::limits::RateLimits;
use crate::policy::{self, PolicySet};
use crate::server;
use crate::tls;
use crate::upstream::{HttpNationalDb, HttpSettings, NationalDb};
use crate::warehouse::embedded::EmbeddedPostgres;
use crate::warehouse::{self, Warehouse};

/// How long start-up waits for the warehouse before giving up.
const WAREHOUSE_START_WAIT: Duration = Duration::from_secs(30);

/// A gateway that is serving; [`RunningGateway::stop`] ends it.
pub struct RunningGateway {
    pub gateway_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    pub policy: Arc<ArcSwap<PolicySet>>,
    /// The gateway's own warehouse login.
    pub warehouse_url: String,
    /// The login that migrated the schema (the embedded cluster's superuser).
    pub warehouse_admin_url: String,
    warehouse: Warehouse,
    server_tls: Arc<tls::ReloadableServerTls>,
    policy_dir: std::path::PathBuf,
    province: u16,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub journal: Journal,
    ship_stop: watch::Sender<bool>,
    shipper_task: Option<JoinHandle<()>>,
    embedded: Option<EmbeddedPostgres>,
}

impl RunningGateway {
    /// Serves until `stop` resolves, reloading the policy on each SIGHUP.
    pub async fn run_until(&self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = hangups.recv() => {
                    match self.reload_policy().await {
                        Ok(version) => tracing::info!(version, "SIGHUP: policy version {version} active"),
                        Err(error) => tracing::error!(%error, "SIGHUP: policy reload failed"),
                    }
                    match self.reload_tls() {
                        Ok(()) => tracing::info!("SIGHUP: certificates and revocation lists reloaded"),
                        Err(error) => tracing::error!(%error, "SIGHUP: TLS reload failed; the active certificates stay"),
                    }
                }
            }
        }
    }

    /// Re-reads the server certificate, key, client CA and CRLs (on SIGHUP;
    /// file changes are noticed by themselves). New connections use them at
    /// once; revocations apply to the next request of every connection.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        self.server_tls.reload()
    }

    /// Re-reads the policy directory (on SIGHUP). A valid set that differs
    /// from the active one becomes a new version in the store and is swapped
    /// in atomically: requests in flight finish on the version they started
    /// with. An invalid set is refused and the active version stays.
    pub async fn reload_policy(&self) -> anyhow::Result<u64> {
        let files = policy::read_dir(&self.policy_dir).map_err(|p| anyhow::anyhow!("{p}"))?;
        let mut set = policy::parse(&files, self.province).map_err(|p| {
            tracing::warn!(problems = %p, "policy reload refused; the active version stays");
            anyhow::anyhow!("the policy directory is invalid; the active version stays:\n{p}")
        })?;
        let (version, new) = self
            .warehouse
            .activate_policy(
                &files,
                "operator (SIGHUP reload)",
                "reloaded from the policy directory",
            )
            .await?;
        set.version = version;
        if new || self.policy.load().version != version {
            self.policy.store(Arc::new(set));
            tracing::info!(version, "policy reloaded");
        }
        Ok(version)
    }

    /// Stops accepting, drains in-flight requests, stops an embedded
    /// warehouse.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        // Every answer given is journaled; anchor the head, then deliver.
        self.journal.checkpoint().await;
        let _ = self.ship_stop.send(true);
        if let Some(task) = self.shipper_task.take() {
            let _ = task.await;
        }
        // Close pooled connections before the server goes, so that nothing
        // reports them dying.
        self.warehouse.pool().close();
        if let Some(mut pg) = self.embedded.take() {
            tokio::task::spawn_blocking(move || pg.stop()).await.ok();
        }
    }
}

/// Connects to (or starts) the warehouse, migrates it, and loads the active
/// policy — seeding it from the policy directory when the store is empty.
struct Prepared {
    warehouse: Warehouse,
    url: String,
    admin_url: String,
    embedded: Option<EmbeddedPostgres>,
    policy: PolicySet,
}

async fn warehouse_and_policy(config: &Config) -> anyhow::Result<Prepared> {
    let (url, admin_url, embedded) = match &config.warehouse.url {
        Some(url) => (
            url.clone(),
            config.warehouse.admin_url.clone().unwrap_or_else(|| url.clone()),
            None,
        ),
        None => {
            let home = config.gateway.data_dir.clone();
            let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&home)).await??;
            pg.provision().await?;
            (pg.gateway_url(), pg.admin_url(), Some(pg))
        }
    };
    let deadline = tokio::time::Instant::now() + WAREHOUSE_START_WAIT;
    loop {
        match warehouse::migrate(&admin_url).await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "warehouse not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.context("the warehouse could not be prepared")),
        }
    }
    let warehouse = Warehouse::new(&url)?;
    let province = config.gateway.province;
    let files = policy::read_dir(&config.gateway.policies).map_err(|p| anyhow::anyhow!("{p}"))?;
    // Refuse to seed the store with a policy that does not load.
    policy::parse(&files, province).map_err(|p| anyhow::anyhow!("policy directory is invalid:\n{p}"))?;
    if warehouse.seed_policy(&files, "popgate (initial import)").await? {
        tracing::info!("policy store was empty; imported the policy directory as version 1");
    }
    let (version, stored) = warehouse
        .active_policy()
        .await?
        .context("the policy store has no active version")?;
    let mut set = policy::parse(&stored, province)
        .map_err(|p| anyhow::anyhow!("active policy version {version} is invalid:\n{p}"))?;
    set.version = version;
    Ok(Prepared {
        warehouse,
        url,
        admin_url,
        embedded,
        policy: set,
    })
}

/// Runs the shipper on a thread of its own with a single-threaded runtime.
/// Encoding a batch of hundreds of rows then never holds up requests on the
/// gateway's worker threads: the kernel shares a core between the two in
/// short slices, where a task on the same worker would run to its next
/// `await`. The handle resolves when the shipper has stopped.
fn spawn_shipper(shipper: Shipper, stop: watch::Receiver<bool>) -> anyhow::Result<JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the shipper's runtime")?;
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("popgate-shipper".into())
        .spawn(move || {
            runtime.block_on(shipper.run(stop));
            // Its warehouse connections close with the runtime, before the
            // gateway is told that the shipper has stopped.
            drop(runtime);
            drop(done);
        })
        .context("cannot start the shipper's thread")?;
    Ok(tokio::spawn(async move {
        let _ = finished.await;
    }))
}

/// How often idle rate-limit keys are forgotten.
const LIMITS_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

async fn prune_limits(limits: Arc<RateLimits>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(LIMITS_PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => limits.prune(),
            _ = shutdown.changed() => return,
        }
    }
}

/// Test seams that no config file can set.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// While set, every journal write fails as on a full disk.
    pub journal_fail_writes: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// How often certificate and CRL files are checked for changes.
const TLS_WATCH_INTERVAL: Duration = Duration::from_secs(2);

async fn watch_tls_files(tls: Arc<tls::ReloadableServerTls>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TLS_WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => match tls.reload_if_changed() {
                Ok(true) => tracing::info!("certificate or CRL files changed: reloaded"),
                Ok(false) => {}
                Err(error) => tracing::error!(%error, "certificate or CRL files changed but cannot be loaded; the active ones stay"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// How often the active version is re-checked besides notifications.
const POLICY_RECHECK: Duration = Duration::from_secs(5);

/// Follows the store's active policy version: on every `popgate_policy`
/// notification and every few seconds, swaps the snapshot when the active
/// version differs from this instance's.
async fn follow_policy(
    warehouse: Warehouse,
    policy: Arc<ArcSwap<PolicySet>>,
    province: u16,
    mut shutdown: watch::Receiver<bool>,
) {
    let refresh = || async {
        let active = warehouse.active_version().await?;
        if active == policy.load().version {
            return Ok::<_, anyhow::Error>(());
        }
        let files = warehouse
            .policy_files(active)
            .await?
            .context("active version vanished")?;
        let mut set = policy::parse(&files, province).map_err(|p| anyhow::anyhow!("{p}"))?;
        set.version = active;
        policy.store(Arc::new(set));
        tracing::info!(version = active, "switched to the store's active policy version");
        Ok(())
    };
    loop {
        // A dedicated connection that LISTENs; rebuilt whenever it drops.
        let conn = tokio_postgres::connect(warehouse.url(), tokio_postgres::NoTls).await;
        let Ok((client, mut connection)) = conn else {
            tokio::select! {
                _ = tokio::time::sleep(POLICY_RECHECK) => { let _ = refresh().await; continue; }
                _ = shutdown.changed() => return,
            }
        };
        let command = format!("LISTEN {}", crate::warehouse::policies::CHANNEL);
        let listen = client.batch_execute(&command);
        tokio::pin!(listen);
        let mut listening = false;
        let mut tick = tokio::time::interval(POLICY_RECHECK);
        loop {
            tokio::select! {
                done = &mut listen, if !listening => {
                    listening = true;
                    if done.is_err() { break; }
                }
                message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                        if let Err(error) = refresh().await {
                            tracing::warn!(%error, "cannot load the newly active policy version");
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                },
                _ = tick.tick() => {
                    if let Err(error) = refresh().await {
                        tracing::debug!(%error, "policy re-check failed");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes warehouse records past their retention, and audits each purge.
async fn purge_expired(
    warehouse: Warehouse,
    journal: Journal,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match warehouse.purge_expired_records().await {
            Ok(0) => {}
            Ok(deleted) => {
                let event = AuditEvent {
                    audit_id: uuid::Uuid::now_v7().to_string(),
                    instance_id: String::new(),
                    seq: 0,
                    ts: String::new(),
                    kind: EventKind::Purge,
                    request_id: uuid::Uuid::now_v7().to_string(),
                    intent_id: None,
                    app_id: None,
                    officer_id: Some("popgate (retention)".to_owned()),
                    officer_unit: None,
                    operation: "purge".to_owned(),
                    purpose: None,
                    case_ref: None,
                    decision: "done".to_owned(),
                    reason: Some("warehouse records past their purpose's retention".to_owned()),
                    citizen_key: None,
                    fields: Vec::new(),
                    policy_version: None,
                    http_status: None,
                    upstream_status: None,
                    upstream_ms: None,
                    upstream_digest: None,
                    released_digest: None,
                    details: Some(serde_json::json!({ "deleted_records": deleted })),
                };
                if let Err(error) = journal.append(event, None).await {
                    tracing::error!(%error, deleted, "purge done but its audit event could not be written");
                }
            }
            Err(error) => tracing::warn!(%error, "retention purge failed; will retry"),
        }
    }
}

/// Brings up a gateway as `config` says.
pub async fn start(config: &Config) -> anyhow::Result<RunningGateway> {
    start_with(config, StartOptions::default()).await
}

/// Brings up a gateway as `config` says, with test seams.
pub async fn start_with(config: &Config, options: StartOptions) -> anyhow::Result<RunningGateway> {
    let Prepared {
        warehouse,
        url,
        admin_url,
        embedded,
        policy: set,
    } = warehouse_and_policy(config).await?;
    tracing::info!(version = set.version, apps = set.apps.len(), "policy active");
    let policy = Arc::new(ArcSwap::from_pointee(set));

    let server_tls = Arc::new(tls::ReloadableServerTls::load(
        &config.tls.cert,
        &config.tls.key,
        &config.tls.client_ca,
        &config.tls.crls,
        config.tls.allow_tls12,
    )?);
    // hyper-rustls sets ALPN itself from the enabled HTTP versions.
    let client_tls = tls::mutual_client_config(
        &config.upstream.ca,
        &config.upstream.cert,
        &config.upstream.key,
        &[],
    )?;
    let upstream: Arc<dyn NationalDb> = Arc::new(HttpNationalDb::new(
        client_tls,
        HttpSettings {
            base_url: config
                .upstream
                .url
                .parse()
                .context("upstream.url is not a valid URL")?,
            timeout: Duration::from_millis(config.upstream.timeout_ms),
            connect_timeout: Duration::from_millis(config.upstream.connect_timeout_ms),
            max_response_bytes: config.upstream.max_response_bytes,
            service_code: config.upstream.service_code.clone(),
            integration_code: config.upstream.integration_code.clone(),
        },
    )?);

    let tokens = Arc::new(
        TokenVerifier::new(config.tokens.verifier_settings())
            .await
            .context("cannot load the identity provider's keys")?,
    );
    let rate_limits = Arc::new(RateLimits::new(config.rate_limits.settings()));
    let a = &config.audit;
    let signer = Arc::new(Signer::from_file(&a.signing_key)?);
    let pseudonyms = Pseudonymiser::from_file(&a.pseudonym_key)?;
    let journal_dir = a.journal_dir(&config.gateway.data_dir);
    let (journal, scan) = Journal::open(
        JournalSettings {
            dir: journal_dir.clone(),
            instance_id: config.gateway.instance_id.clone(),
            segment_bytes: a.segment_bytes,
            checkpoint_every: a.checkpoint_every,
            checkpoint_interval: Duration::from_secs(a.checkpoint_interval_secs),
            max_backlog_events: a.max_backlog_events,
            max_backlog_age: Duration::from_secs(a.max_backlog_age_secs),
            fail_writes: options.journal_fail_writes.clone(),
        },
        signer,
    )?;
    tracing::info!(head = scan.head_seq, truncated = scan.truncated_bytes, dir = %journal_dir.display(), "audit journal open");
    let (ship_stop, ship_stop_rx) = watch::channel(false);
    let shipper = Shipper::new(
        ShipperSettings {
            dir: journal_dir,
            instance_id: config.gateway.instance_id.clone(),
            batch: a.ship_batch,
            retention: Duration::from_secs(a.retention_hours * 3600),
        },
        journal.state.clone(),
        // A pool of its own, whose connections its own thread drives.
        Warehouse::new(warehouse.url())?,
    );
    let shipper_task = spawn_shipper(shipper, ship_stop_rx)?;
    let status = Arc::new(status::GatewayStatus::default());
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let breaker = Arc::new(crate::upstream::breaker::CircuitBreaker::new(
        config.upstream.circuit_failures,
        Duration::from_secs(config.upstream.circuit_open_secs),
    ));
    let gateway_listener = TcpListener::bind(config.gateway.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.gateway.listen))?;
    let ops_listener = TcpListener::bind(config.gateway.ops_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.gateway.ops_listen))?;
    let gateway_addr = gateway_listener.local_addr()?;
    let ops_addr = ops_listener.local_addr()?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let app_api = Arc::new(app::AppApi {
        policy: policy.clone(),
        upstream,
        tokens: tokens.clone(),
        limits: rate_limits.clone(),
        journal: journal.clone(),
        pseudonyms,
        warehouse: warehouse.clone(),
        breaker: breaker.clone(),
        metrics: metrics.clone(),
        revocations: server_tls.revocations.clone(),
        console: app::ConsoleAccess {
            admin_apps: config.gateway.admin_apps.clone(),
            audit_apps: config.gateway.audit_apps.clone(),
        },
        trusted_keys: a
            .trusted_keys
            .as_deref()
            .map(crate::audit::verify::load_trusted_keys)
            .transpose()?,
        max_body_bytes: config.limits.max_body_bytes,
        request_timeout: Duration::from_millis(config.limits.request_timeout_ms),
        status: status.clone(),
    });
    let ops_api = Arc::new(ops::OpsApi {
        metrics,
        breaker,
        limits: rate_limits.clone(),
        tokens: tokens.clone(),
        status: status.clone(),
        journal: journal.state.clone(),
        policy: policy.clone(),
        warehouse: warehouse.clone(),
        instance_id: config.gateway.instance_id.clone(),
    });
    let limits = config.limits.server_limits();
    let gateway_task = tokio::spawn(server::serve(
        gateway_listener,
        Some(server_tls.config.clone()),
        limits.clone(),
        move |req, peer| app_api.clone().handle(req, peer),
        shutdown_rx.clone(),
    ));
    let ops_task = tokio::spawn(server::serve(
        ops_listener,
        None,
        limits,
        move |req, peer| ops_api.clone().handle(req, peer),
        shutdown_rx.clone(),
    ));
    let prune_task = tokio::spawn(prune_limits(rate_limits, shutdown_rx.clone()));
    let tls_watch_task = tokio::spawn(watch_tls_files(server_tls.clone(), shutdown_rx.clone()));
    let follow_task = tokio::spawn(follow_policy(
        warehouse.clone(),
        policy.clone(),
        config.gateway.province,
        shutdown_rx.clone(),
    ));
    let purge_task = tokio::spawn(purge_expired(
        warehouse.clone(),
        journal.clone(),
        Duration::from_secs(a.purge_interval_secs),
        shutdown_rx.clone(),
    ));
    status.set_listening(true);
    tracing::info!(%gateway_addr, %ops_addr, "gateway listening");
    Ok(RunningGateway {
        gateway_addr,
        ops_addr,
        policy,
        warehouse_url: url,
        warehouse_admin_url: admin_url,
        warehouse,
        policy_dir: config.gateway.policies.clone(),
        province: config.gateway.province,
        shutdown,
        tasks: vec![
            gateway_task,
            ops_task,
            prune_task,
            purge_task,
            follow_task,
            tls_watch_task,
        ],
        server_tls,
        journal,
        ship_stop,
        shipper_task: Some(shipper_task),
        embedded,
    })
}
