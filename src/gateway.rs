//! Building a gateway from its [`Config`] and running it: the warehouse
//! (connected or embedded, migrated), the first policy snapshot, TLS, the
//! upstream client, the journal and its shipper, the two listeners, and the
//! background tasks — limiter pruning, certificate watching, following the
//! store's active policy version, retention purges. [`Gateway::stop`] ends
//! them in order: stop accepting and drain, anchor the journal, deliver,
//! close the pool, stop an embedded warehouse.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::admin::AdminApi;
use crate::api::auditor::AuditApi;
use crate::api::citizens::CitizensApi;
use crate::api::ops::OpsApi;
use crate::api::request::{AuditRecorder, ConsoleAccess};
use crate::api::status::GatewayStatus;
use crate::api::Api;
use crate::audit::checkpoint::Signer;
use crate::audit::event::{AuditEvent, EventKind, Pseudonymiser};
use crate::audit::journal::{Journal, JournalLock, JournalSettings};
use crate::audit::shipper::{Shipper, ShipperSettings};
use crate::auth::token::TokenVerifier;
use crate::config::Config;
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::policy;
use crate::policy::signature::{self, PolicyTrust, StoredVersion};
use crate::policy::store::PolicyStore;
use crate::server;
use crate::tls;
use crate::upstream::breaker::CircuitBreaker;
use crate::upstream::{HttpNationalDb, HttpSettings, NationalDb};
use crate::warehouse::embedded::EmbeddedPostgres;
use crate::warehouse::{self, Warehouse};

/// How long start-up waits for the warehouse before giving up.
const WAREHOUSE_START_WAIT: Duration = Duration::from_secs(30);
/// How often idle rate-limit keys are forgotten.
const LIMITS_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// How often certificate and CRL files are checked for changes.
const TLS_WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// How often the active version is re-checked besides notifications.
const POLICY_RECHECK: Duration = Duration::from_secs(5);
/// How long to wait before listening again after the connection dropped.
const POLICY_RELISTEN: Duration = Duration::from_millis(500);

/// Test seams that no config file can set.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// While set, every journal write fails as on a full disk.
    pub journal_fail_writes: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// The clock of holds and reports (tests move it forward).
    pub clock: crate::clock::Clock,
}

/// A gateway that is serving; [`Gateway::stop`] ends it.
pub struct Gateway {
    pub gateway_addr: SocketAddr,
    pub ops_addr: SocketAddr,
    /// The web console's address, when `[console]` is configured.
    pub console_addr: Option<SocketAddr>,
    pub policy: Arc<PolicyStore>,
    /// The gateway's own warehouse login.
    pub warehouse_url: String,
    /// The login that migrated the schema (the embedded cluster's superuser).
    pub warehouse_admin_url: String,
    pub journal: Journal,
    warehouse: Warehouse,
    server_tls: Arc<tls::ReloadableServerTls>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    in_flight: crate::api::InFlight,
    drain_timeout: Duration,
    ship_stop: watch::Sender<bool>,
    shipper_task: Option<JoinHandle<()>>,
    embedded: Option<Arc<std::sync::Mutex<EmbeddedPostgres>>>,
}

impl Gateway {
    /// Brings up a gateway as `config` says.
    pub async fn start(config: &Config) -> anyhow::Result<Gateway> {
        Gateway::start_with(config, StartOptions::default()).await
    }

    /// Brings up a gateway as `config` says, with test seams.
    pub async fn start_with(config: &Config, options: StartOptions) -> anyhow::Result<Gateway> {
        start_with(config, options).await
    }

    /// Serves until `stop` resolves, reloading the certificates, keys, CAs
    /// and CRLs on each SIGHUP — never the policy, which changes only by an
    /// approved proposal.
    pub async fn run_until(&self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = hangups.recv() => {
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

    /// Stops accepting, drains in-flight requests, anchors and delivers the
    /// journal, stops an embedded warehouse.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        // Pipelines whose clients left run on to their outcome events.
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        let running = self.in_flight.drained(deadline).await;
        if running > 0 {
            tracing::warn!(running, "stopping with request pipelines still running");
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
        if let Some(pg) = self.embedded.take() {
            tokio::task::spawn_blocking(move || pg.lock().unwrap_or_else(|p| p.into_inner()).stop())
                .await
                .ok();
        }
    }
}

/// The warehouse, migrated, and the policy store's active version.
struct Prepared {
    warehouse: Warehouse,
    url: String,
    admin_url: String,
    embedded: Option<EmbeddedPostgres>,
    policy: PolicyStore,
}

/// Connects to (or starts) the warehouse, migrates it, and loads the active
/// policy — seeding it from the policy directory when the store is empty.
async fn warehouse_and_policy(config: &Config, signer: &Signer) -> anyhow::Result<Prepared> {
    let (url, admin_url, embedded) = match &config.warehouse.url {
        Some(url) => (
            url.clone(),
            config.warehouse.admin_url.clone().unwrap_or_else(|| url.clone()),
            None,
        ),
        None => {
            let pg = EmbeddedPostgres::start_provisioned(&config.gateway.data_dir).await?;
            (pg.gateway_url(), pg.admin_url(), Some(pg))
        }
    };
    let tls = config.warehouse.tls()?;
    let deadline = tokio::time::Instant::now() + WAREHOUSE_START_WAIT;
    let mut wait = Duration::from_millis(250);
    // Logged once per state change, not per attempt.
    let mut failing: Option<String> = None;
    loop {
        match warehouse::migrate_with(&admin_url, &tls).await {
            Ok(()) => break,
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                let text = e.to_string();
                if failing.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %e, "warehouse not ready; retrying for up to {}s", WAREHOUSE_START_WAIT.as_secs());
                    failing = Some(text);
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(anyhow::Error::new(e).context("the warehouse could not be prepared")),
        }
    }
    let warehouse = Warehouse::with_tls(&url, tls)?;
    let province = config.gateway.province;
    let instance = config.gateway.instance_id.clone();
    let sign = |v: &StoredVersion| signature::sign(v, &instance, signer);
    // The policy directory seeds an empty store, and is not read otherwise.
    if warehouse.active_policy().await?.is_none() {
        let files = policy::read_dir(&config.gateway.policies).map_err(|p| anyhow::anyhow!("{p}"))?;
        // Refuse to seed the store with a policy that does not load.
        policy::parse(&files, province).map_err(|p| anyhow::anyhow!("policy directory is invalid:\n{p}"))?;
        if warehouse
            .seed_policy(&files, "popgate (initial import)", &sign)
            .await?
        {
            tracing::info!("policy store was empty; imported the policy directory as version 1");
        }
    }
    let adopted = warehouse.adopt_unsigned_store(&sign).await?;
    if adopted > 0 {
        tracing::warn!(
            adopted,
            "the policy store predates signed versions: this instance signed the versions it had applied"
        );
    }
    let active = warehouse
        .active_policy()
        .await?
        .context("the policy store has no active version")?;
    let trust = PolicyTrust::new(
        &instance,
        signer.public_key(),
        config.audit.trusted_keys.as_deref(),
    )?;
    let policy = PolicyStore::new(&active, province, trust).map_err(|why| {
        anyhow::anyhow!("the active policy version cannot be applied, and no other is known good: {why}")
    })?;
    Ok(Prepared {
        warehouse,
        url,
        admin_url,
        embedded,
        policy,
    })
}

async fn start_with(config: &Config, options: StartOptions) -> anyhow::Result<Gateway> {
    // One process per journal: refuse before touching anything else (an
    // embedded warehouse above all, which the other process is using).
    let journal_dir = config.audit.journal_dir(&config.gateway.data_dir);
    let journal_lock = JournalLock::acquire(&journal_dir)?;
    let signer = Arc::new(Signer::from_file(&config.audit.signing_key)?);
    let Prepared {
        warehouse,
        url,
        admin_url,
        embedded,
        policy,
    } = warehouse_and_policy(config, &signer).await?;
    let policy = Arc::new(policy);
    tracing::info!(
        version = policy.version(),
        apps = policy.snapshot().apps.len(),
        "policy active"
    );

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
    let u = &config.upstream;
    let upstream: Arc<dyn NationalDb> = Arc::new(HttpNationalDb::new(
        client_tls,
        HttpSettings {
            base_url: u.url.clone(),
            timeout: u.timeout,
            connect_timeout: u.connect_timeout,
            max_response_bytes: u.max_response_bytes,
            service_code: u.service_code.clone(),
            integration_code: u.integration_code.clone(),
            http1_connections: u.http1_connections,
        },
    )?);

    let tokens = Arc::new(
        TokenVerifier::new(config.tokens.verifier_settings())
            .await
            .context("cannot load the identity provider's keys")?,
    );
    let rate_limits = Arc::new(match &config.rate_limits.redis_url {
        Some(url) => {
            let limiter = crate::limits::shared::SharedLimiter::new(
                url,
                config.rate_limits.redis_ca.as_deref(),
                REDIS_KEY_PREFIX,
            )?;
            let limits = RateLimits::shared(config.rate_limits.settings(), limiter);
            // Before the first request: how many instances share them.
            match warehouse
                .heartbeat(&config.gateway.instance_id, HEARTBEAT_WITHIN)
                .await
            {
                Ok(n) => limits.set_live_instances(n),
                Err(error) => tracing::warn!(%error, "no heartbeat: the fallback counts this instance alone"),
            }
            tracing::info!("rate limits shared in Redis");
            limits
        }
        None => RateLimits::new(config.rate_limits.settings()),
    });
    let a = &config.audit;
    let pseudonyms = Pseudonymiser::from_file(&a.pseudonym_key)?;
    let (journal, scan) = Journal::open_locked(
        JournalSettings {
            dir: journal_dir.clone(),
            instance_id: config.gateway.instance_id.clone(),
            segment_bytes: a.segment_bytes,
            checkpoint_every: a.checkpoint_every,
            checkpoint_interval: a.checkpoint_interval,
            max_backlog_events: a.max_backlog_events,
            max_backlog_age: a.max_backlog_age,
            fail_writes: options.journal_fail_writes.clone(),
        },
        signer.clone(),
        journal_lock,
    )?;
    tracing::info!(head = scan.head_seq, truncated = scan.truncated_bytes, dir = %journal_dir.display(), "audit journal open");
    let (ship_stop, ship_stop_rx) = watch::channel(false);
    let shipper = Shipper::new(
        ShipperSettings {
            dir: journal_dir,
            instance_id: config.gateway.instance_id.clone(),
            batch: a.ship_batch,
            retention: a.retention,
        },
        journal.state.clone(),
        // A pool of its own, whose connections its own thread drives.
        warehouse.another_pool()?,
    );
    let shipper_task = spawn_shipper(shipper, ship_stop_rx)?;
    let status = Arc::new(GatewayStatus::default());
    let metrics = Arc::new(Metrics::default());
    let breaker = Arc::new(CircuitBreaker::new(u.circuit_failures, u.circuit_open));
    let gateway_listener = TcpListener::bind(config.gateway.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.gateway.listen))?;
    let ops_listener = TcpListener::bind(config.gateway.ops_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.gateway.ops_listen))?;
    let gateway_addr = gateway_listener.local_addr()?;
    let ops_addr = ops_listener.local_addr()?;

    let recorder = AuditRecorder {
        journal: journal.clone(),
        metrics: metrics.clone(),
    };
    let trusted_keys = a
        .trusted_keys
        .as_deref()
        .map(crate::audit::verify::load_trusted_keys)
        .transpose()?;
    let alerts = {
        let rules = match &config.alerts.rules {
            Some(path) => crate::audit::alerts::Rules::load(path)?,
            None => crate::audit::alerts::Rules::default(),
        };
        let mut engine = crate::audit::alerts::Engine::new(rules, warehouse.clone(), metrics.clone())?;
        let al = &config.alerts;
        if let Some(url) = &al.webhook_url {
            let ca = al.webhook_ca.as_deref().context(
                "[alerts] webhook_url needs webhook_ca, the CA of the webhook's server certificate",
            )?;
            engine.webhook = Some(crate::audit::alerts::Webhook::new(
                url.clone(),
                ca,
                al.webhook_cert.as_deref().unwrap_or(&config.upstream.cert),
                al.webhook_key.as_deref().unwrap_or(&config.upstream.key),
                config.gateway.instance_id.clone(),
            )?);
        }
        Arc::new(engine)
    };
    let tracer = match &config.telemetry.otlp_endpoint {
        Some(endpoint) => {
            // Detached: it ends when the last span sender (the API) is gone.
            let (tracer, _exporter) = crate::telemetry::Tracer::otlp(
                endpoint.clone(),
                config.telemetry.service_name.clone(),
                config.gateway.instance_id.clone(),
            );
            tracing::info!(%endpoint, "exporting request traces over OTLP");
            tracer
        }
        None => crate::telemetry::Tracer::default(),
    };
    let in_flight = crate::api::InFlight::default();
    let api = Arc::new(Api {
        tracer,
        in_flight: in_flight.clone(),
        policy: policy.clone(),
        tokens: tokens.clone(),
        limits: rate_limits.clone(),
        tls: server_tls.active.clone(),
        metrics: metrics.clone(),
        recorder: recorder.clone(),
        console: {
            // The web console acts as an app of its own on both surfaces.
            let web: Vec<String> = config
                .console
                .iter()
                .map(|_| crate::console::CONSOLE_APP_ID.to_owned())
                .collect();
            ConsoleAccess {
                admin_apps: config.gateway.admin_apps.iter().chain(&web).cloned().collect(),
                audit_apps: config.gateway.audit_apps.iter().chain(&web).cloned().collect(),
            }
        },
        max_body_bytes: config.limits.max_body_bytes,
        request_timeout: config.limits.request_timeout,
        citizens: CitizensApi {
            upstream,
            pseudonyms: pseudonyms.clone(),
            limits: rate_limits.clone(),
            breaker: breaker.clone(),
            status: status.clone(),
            metrics: metrics.clone(),
            recorder,
        },
        admin: AdminApi {
            policy: policy.clone(),
            warehouse: warehouse.clone(),
            signer: signer.clone(),
            instance_id: config.gateway.instance_id.clone(),
            freeze_confirm_within: config.gateway.freeze_confirm_within,
        },
        audit: AuditApi {
            warehouse: warehouse.clone(),
            pseudonyms,
            trusted_keys,
            journal: journal.clone(),
            signer: signer.clone(),
            instance_id: config.gateway.instance_id.clone(),
            clock: options.clock.clone(),
            hold_without_approval: a.hold_without_approval,
            province_name: crate::units::Units::get()
                .province(config.gateway.province)
                .map_or_else(|| config.gateway.province.to_string(), |p| p.name.to_owned()),
            alerts: alerts.clone(),
        },
    });
    let ops_api = Arc::new(OpsApi {
        metrics,
        breaker,
        limits: rate_limits.clone(),
        tokens,
        status: status.clone(),
        journal: journal.state.clone(),
        policy: policy.clone(),
        warehouse: warehouse.clone(),
        instance_id: config.gateway.instance_id.clone(),
        shipper_stuck_after: a.shipper_stuck_after,
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let limits = config.limits.server_limits();
    let mut console_addr = None;
    let mut tasks = Vec::new();
    if let Some(c) = &config.console {
        let listener = TcpListener::bind(c.listen)
            .await
            .with_context(|| format!("cannot listen on {} (console.listen)", c.listen))?;
        console_addr = Some(listener.local_addr()?);
        let tls = tls::browser_server_config(&config.tls.cert, &config.tls.key, c.client_ca.as_deref())?;
        let oidc = crate::console::oidc::Oidc::new(&c.oidc)?;
        let console = Arc::new(crate::console::WebConsole::new(
            api.clone(),
            oidc,
            c.idle_timeout,
            options.clock.clone(),
        ));
        tasks.push(tokio::spawn(server::serve(
            listener,
            Some(tls::fixed(tls)),
            limits.clone(),
            move |req, peer| console.clone().handle(req, peer),
            shutdown_rx.clone(),
        )));
    }
    tasks.extend([
        tokio::spawn(server::serve(
            gateway_listener,
            Some(server_tls.active.clone()),
            limits.clone(),
            move |req, peer| api.clone().handle(req, peer),
            shutdown_rx.clone(),
        )),
        tokio::spawn(server::serve(
            ops_listener,
            None,
            limits,
            move |req, peer| ops_api.clone().handle(req, peer),
            shutdown_rx.clone(),
        )),
        tokio::spawn(prune_limits(rate_limits.clone(), shutdown_rx.clone())),
        tokio::spawn(purge_expired(
            warehouse.clone(),
            journal.clone(),
            a.purge_interval,
            shutdown_rx.clone(),
        )),
        tokio::spawn(follow_policy(
            warehouse.clone(),
            policy.clone(),
            alerts.clone(),
            shutdown_rx.clone(),
        )),
        tokio::spawn(watch_tls_files(server_tls.clone(), shutdown_rx.clone())),
    ]);
    if config.alerts.enabled {
        tasks.push(tokio::spawn(alerts.run(shutdown_rx.clone())));
    }
    if config.rate_limits.redis_url.is_some() {
        tasks.push(tokio::spawn(heartbeat(
            warehouse.clone(),
            rate_limits.clone(),
            config.gateway.instance_id.clone(),
            shutdown_rx.clone(),
        )));
    }
    let embedded = embedded.map(|pg| Arc::new(std::sync::Mutex::new(pg)));
    if let Some(pg) = &embedded {
        tasks.push(tokio::spawn(supervise_embedded(pg.clone(), shutdown_rx.clone())));
    }
    status.set_listening(true);
    tracing::info!(%gateway_addr, %ops_addr, "gateway listening");
    if let Some(addr) = console_addr {
        tracing::info!(%addr, "web console listening");
    }
    Ok(Gateway {
        gateway_addr,
        ops_addr,
        console_addr,
        policy,
        warehouse_url: url,
        warehouse_admin_url: admin_url,
        journal,
        warehouse,
        server_tls,
        shutdown,
        tasks,
        in_flight,
        drain_timeout: config.limits.drain_timeout,
        ship_stop,
        shipper_task: Some(shipper_task),
        embedded,
    })
}

/// How often the embedded PostgreSQL is checked.
const SUPERVISE_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps an embedded PostgreSQL running: one that died (killed, crashed)
/// is started again on its port, with a log line, so that a long demo
/// keeps working.
async fn supervise_embedded(
    pg: Arc<std::sync::Mutex<EmbeddedPostgres>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SUPERVISE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let pg = pg.clone();
        let revived = tokio::task::spawn_blocking(move || {
            let mut pg = pg.lock().unwrap_or_else(|p| p.into_inner());
            if pg.is_running() {
                return Ok(false);
            }
            tracing::warn!("the embedded PostgreSQL has stopped; starting it again");
            pg.revive()
        })
        .await;
        match revived {
            Ok(Ok(true)) => tracing::info!("the embedded PostgreSQL runs again"),
            Ok(Err(error)) => {
                tracing::error!(%error, "the embedded PostgreSQL cannot be started again; retrying")
            }
            _ => {}
        }
    }
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

/// Where the shared limits live in Redis.
const REDIS_KEY_PREFIX: &str = "popgate:limits:";
/// How often an instance says it is alive, and how long it counts after.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const HEARTBEAT_WITHIN: Duration = Duration::from_secs(15);

/// Keeps this instance's heartbeat and the count of live instances, by
/// which the fallback divides every limit.
async fn heartbeat(
    warehouse: Warehouse,
    limits: Arc<RateLimits>,
    instance_id: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => match warehouse.heartbeat(&instance_id, HEARTBEAT_WITHIN).await {
                Ok(n) => {
                    failing = false;
                    limits.set_live_instances(n);
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "heartbeat failed: the fallback keeps the last count of instances");
                    }
                    failing = true;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn prune_limits(limits: Arc<RateLimits>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(LIMITS_PRUNE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => limits.prune(),
            _ = shutdown.changed() => return,
        }
    }
}

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

/// Swaps this instance's snapshot to the store's active version when they
/// differ (a version this instance refused is not tried again), and ends an
/// emergency freeze past its time.
async fn refresh_policy(
    warehouse: &Warehouse,
    policy: &PolicyStore,
    alerts: &Arc<crate::audit::alerts::Engine>,
) -> anyhow::Result<()> {
    if let Some(version) = warehouse.expire_freezes().await? {
        tracing::warn!(
            version,
            "an unconfirmed emergency freeze expired; version {version} is active again"
        );
    }
    // The number first: the files are read only when it changed.
    let number = warehouse.active_version().await?;
    let refused = policy.refused().is_some_and(|(v, _)| v == number);
    if number == policy.version() || refused {
        return Ok(());
    }
    let active = warehouse
        .version(number)
        .await?
        .context("the active version vanished")?;
    if let Err(why) = policy.activate(&active) {
        use crate::audit::alerts::POLICY_SIGNATURE;
        let alert = crate::warehouse::alerts::NewAlert {
            rule: POLICY_SIGNATURE,
            dedup_key: format!("{POLICY_SIGNATURE}:{number}"),
            officer_id: None,
            app_id: None,
            instance_id: None,
            summary: format!("policy version {number} was refused: {why}"),
            audit_ids: Vec::new(),
        };
        if let Err(error) = alerts.raise(alert).await {
            tracing::error!(%error, "cannot store the policy-signature alert");
        }
        anyhow::bail!(why);
    }
    tracing::info!(
        version = active.version,
        "switched to the store's active policy version"
    );
    Ok(())
}

/// Follows the store's active policy version: on every `popgate_policy`
/// notification and every few seconds.
async fn follow_policy(
    warehouse: Warehouse,
    policy: Arc<PolicyStore>,
    alerts: Arc<crate::audit::alerts::Engine>,
    mut shutdown: watch::Receiver<bool>,
) {
    let alerts = &alerts;
    loop {
        // A dedicated connection that LISTENs; rebuilt whenever it drops.
        let Ok(mut listener) = warehouse.listen_for_policy_changes().await else {
            tokio::select! {
                _ = tokio::time::sleep(POLICY_RECHECK) => { let _ = refresh_policy(&warehouse, &policy, alerts).await; continue; }
                _ = shutdown.changed() => return,
            }
        };
        let mut tick = tokio::time::interval(POLICY_RECHECK);
        loop {
            tokio::select! {
                changed = listener.next_change() => match changed {
                    Ok(()) => {
                        if let Err(error) = refresh_policy(&warehouse, &policy, alerts).await {
                            tracing::warn!(%error, "cannot load the newly active policy version");
                        }
                    }
                    Err(_) => break,
                },
                _ = tick.tick() => {
                    if let Err(error) = refresh_policy(&warehouse, &policy, alerts).await {
                        tracing::debug!(%error, "policy re-check failed");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
        tokio::time::sleep(POLICY_RELISTEN).await;
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
                    officer_id: Some("popgate (retention)".to_owned()),
                    reason: Some("warehouse records past their purpose's retention".to_owned()),
                    details: Some(serde_json::json!({ "deleted_records": deleted })),
                    ..AuditEvent::new(EventKind::Purge, "purge", "done")
                };
                if let Err(error) = journal.append(event, Vec::new()).await {
                    tracing::error!(%error, deleted, "purge done but its audit event could not be written");
                }
            }
            Err(error) => tracing::warn!(%error, "retention purge failed; will retry"),
        }
    }
}
