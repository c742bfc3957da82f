//! `popgate demo`: everything on embedded defaults in one process — a dev
//! PKI, the national-DB simulator, a private PostgreSQL cluster and the
//! gateway, on free loopback ports — then `ready.json` and curl lines that
//! work as printed. A second run on the same directory reuses the PKI and
//! the cluster.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::sim::idp::{Account, IdpSettings, RegisteredClient, RunningIdp};
use crate::sim::{Faults, SimSettings, Simulator};
use crate::tls::pki::{self, PkiLayout, DEMO_TOKEN_AUDIENCE, DEMO_TOKEN_ISSUER, SAMPLE_APPS};
use crate::warehouse::embedded::free_port;

/// Options of `popgate demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub dir: PathBuf,
    /// The policy directory; `None`: `policies/` of the working directory
    /// when there is one, else the sample set built into the binary.
    pub policies: Option<PathBuf>,
    pub province: u16,
    pub seed: u64,
    pub population: u32,
    /// Multiplies every rate limit (still enforced), for load tests.
    pub limit_scale: f64,
    /// Share of the simulator's residences coded before the 2025 reform.
    pub legacy_address_share: f64,
    /// Gateway instances on the one warehouse (`demo-1` … `demo-N`).
    pub instances: u16,
}

/// The demo's share of residences coded before the 2025 reform.
pub const DEMO_LEGACY_ADDRESS_SHARE: f64 = 0.15;

/// Lifetime of the tokens the demo prints.
const DEMO_TOKEN_TTL_SECS: u64 = 12 * 3600;

/// How many sample IDs `ready.json` lists.
const SAMPLE_IDS: usize = 24;

/// Runs the demo until `stop` resolves, then stops everything it started.
pub async fn run(opts: DemoOptions, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let dir = std::fs::canonicalize(&opts.dir)?;
    // One demo per directory: a second one would share the first one's
    // journal and PostgreSQL cluster.
    let _lock =
        crate::audit::journal::JournalLock::acquire_file(&dir.join("demo.lock"), "the demo directory", &dir)?;
    let policies = policy_dir(opts.policies.as_deref(), &dir)?;
    let layout = PkiLayout::new(dir.join("certs"));
    if !layout.is_complete() {
        pki::init(&layout.dir, SAMPLE_APPS, true)?;
        tracing::info!(dir = %layout.dir.display(), "created the development PKI");
    }

    // The national-DB simulator.
    let settings = SimSettings {
        seed: opts.seed,
        population: opts.population,
        province: opts.province,
        faults: Faults::default(),
        legacy_address_share: opts.legacy_address_share,
    };
    let mut sim = Simulator::spawn(&settings, &layout).await?;

    // The alert rules beside the policies, when there are any.
    let alert_rules = policies
        .parent()
        .map(|p| p.join("alerts.toml"))
        .filter(|p| p.is_file());
    // The demo identity provider, and the console that signs in there.
    let (mut idp, console) = match start_identity_provider(&dir, &layout) {
        Ok(started) => started,
        Err(e) => {
            sim.stop().await;
            return Err(e);
        }
    };
    let mut config = Config::development(&layout, sim.url(), policies, dir.clone());
    config.console = Some(console.section.clone());
    config.alerts.rules = alert_rules;
    // `popgate certs revoke` publishes here; the gateway reloads it.
    if layout.apps_crl().exists() {
        config.tls.crls = vec![layout.apps_crl()];
    }
    config.gateway.listen = ([127, 0, 0, 1], free_port()?).into();
    config.gateway.ops_listen = ([127, 0, 0, 1], free_port()?).into();
    config.gateway.instance_id = "demo-1".to_owned();
    config.gateway.province = opts.province;
    config.upstream.service_code = "POPGATE-DEMO".to_owned();
    config.upstream.integration_code = format!("POPGATE-{:02}", opts.province);
    let instances = opts.instances.max(1);
    config.rate_limits.scale = opts.limit_scale;
    // Several instances share every limit in a private Redis.
    let redis = if instances > 1 {
        match crate::limits::embedded::EmbeddedRedis::start(&dir.join("redis")).await {
            Ok(r) => {
                config.rate_limits.redis_url = Some(r.url());
                Some(r)
            }
            Err(e) => {
                idp.stop().await;
                sim.stop().await;
                return Err(e.context("the instances' shared rate limits need a Redis"));
            }
        }
    } else {
        None
    };
    // The key auditors pin when they verify the instances' checkpoints; the
    // instances share the demo's signing key and trust each other's
    // signatures of policy versions through the same file.
    let signer = crate::audit::checkpoint::Signer::from_file(&layout.audit_signing_key())?;
    let trusted_keys = dir.join("audit-trusted-keys.json");
    let names: Vec<String> = (1..=instances).map(|k| format!("demo-{k}")).collect();
    let keys: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .map(|n| (n.clone(), json!([signer.public_key()])))
        .collect();
    pki::write_file(
        &trusted_keys,
        serde_json::Value::Object(keys).to_string().as_bytes(),
        0o644,
    )?;
    if instances > 1 {
        config.audit.trusted_keys = Some(trusted_keys.clone());
    }
    pki::write_file(&dir.join("gateway.toml"), config.to_toml().as_bytes(), 0o600)?;
    let gateway = match Gateway::start(&config).await {
        Ok(g) => g,
        Err(e) => {
            idp.stop().await;
            sim.stop().await;
            return Err(e);
        }
    };
    // The others on the first one's warehouse, with the gateway's role only
    // (the first one migrated it), each with its own journal and chain.
    let mut others: Vec<Gateway> = Vec::new();
    for name in names.iter().skip(1) {
        let mut c = config.clone();
        c.gateway.instance_id = name.clone();
        c.gateway.data_dir = dir.join("instances").join(name);
        c.gateway.listen = ([127, 0, 0, 1], free_port()?).into();
        c.gateway.ops_listen = ([127, 0, 0, 1], free_port()?).into();
        c.warehouse.url = Some(gateway.warehouse_url.clone());
        c.warehouse.admin_url = None;
        // One console is enough: it acts on the shared warehouse.
        c.console = None;
        match Gateway::start(&c).await {
            Ok(g) => others.push(g),
            Err(e) => {
                for g in others {
                    g.stop().await;
                }
                gateway.stop().await;
                idp.stop().await;
                sim.stop().await;
                return Err(e.context(format!("instance {name} did not start")));
            }
        }
    }
    let all: Vec<&Gateway> = std::iter::once(&gateway).chain(others.iter()).collect();
    let sample_ids = sim.sim.population().sample_ids(SAMPLE_IDS);
    let ready = json!({
        "gateway_url": format!("https://{}", gateway.gateway_addr),
        "ops_url": format!("http://{}", gateway.ops_addr),
        "upstream_url": sim.url().to_string().trim_end_matches('/'),
        "warehouse_url": gateway.warehouse_url,
        "ca_cert": layout.apps_ca_cert(),
        "apps": SAMPLE_APPS.iter().map(|a| (a.to_string(), json!({
            "cert": layout.app_cert(a),
            "key": layout.app_key(a),
        }))).collect::<serde_json::Map<_, _>>(),
        "sample_personal_ids": sample_ids,
        "token_issuer": DEMO_TOKEN_ISSUER,
        "token_audience": DEMO_TOKEN_AUDIENCE,
        "jwks": layout.jwks(),
        "upstream_ca": layout.national_ca_cert(),
        "upstream_client": { "cert": layout.upstream_client_cert(), "key": layout.upstream_client_key() },
        "warehouse_admin_url": gateway.warehouse_admin_url,
        "audit_trusted_keys": trusted_keys,
        "audit_anchor": config.audit.journal_dir(&config.gateway.data_dir).join(crate::audit::journal::CHECKPOINT_LOG),
        "gateway_urls": all.iter().map(|g| format!("https://{}", g.gateway_addr)).collect::<Vec<_>>(),
        "ops_urls": all.iter().map(|g| format!("http://{}", g.ops_addr)).collect::<Vec<_>>(),
        "redis_url": redis.as_ref().map(crate::limits::embedded::EmbeddedRedis::url),
        "console_url": gateway.console_addr.map(|a| format!("https://{a}")),
        "console_accounts": console.accounts.iter().map(|a| json!({
            "name": a.name, "role": a.role, "password": a.password,
        })).collect::<Vec<_>>(),
        "identity_provider_url": idp.issuer(),
        "pid": std::process::id(),
    });
    let ready_path = dir.join("ready.json");
    write_atomically(&ready_path, serde_json::to_string_pretty(&ready)?.as_bytes())?;
    let printed = print_instructions(
        &layout,
        &gateway.gateway_addr.to_string(),
        &gateway.ops_addr.to_string(),
        &sample_ids,
        &ready_path,
    )
    .map(|()| print_console(gateway.console_addr, &console.accounts));
    let served = match printed {
        Ok(()) => gateway.run_until(stop).await,
        Err(e) => Err(e),
    };
    eprintln!("popgate demo: stopping");
    let _ = std::fs::remove_file(&ready_path);
    for g in others {
        g.stop().await;
    }
    gateway.stop().await;
    idp.stop().await;
    sim.stop().await;
    drop(redis);
    served
}

/// The demo's console: its config section and the accounts that sign in.
struct DemoConsole {
    section: crate::config::ConsoleSection,
    accounts: Vec<Account>,
}

/// The demo officials: two policy admins (four eyes), an auditor, and an
/// officer whom the console refuses.
const DEMO_ACCOUNTS: &[(&str, &str, &str)] = &[
    ("qtv-01", "Nguyễn Văn An", "policy-admin"),
    ("qtv-02", "Trần Thị Bình", "policy-admin"),
    ("kiemtra-01", "Lê Minh Cường", "auditor"),
    ("canbo-01", "Phạm Thu Dung", "officer"),
];

/// The console's client id at the demo identity provider.
const CONSOLE_CLIENT_ID: &str = "popgate-console";

/// Starts the demo identity provider on a free port; the accounts and the
/// console's client secret are made once per directory (owner-only) and
/// reused.
fn start_identity_provider(dir: &Path, layout: &PkiLayout) -> anyhow::Result<(RunningIdp, DemoConsole)> {
    let accounts_file = dir.join("console-accounts.json");
    let accounts: Vec<Account> = match std::fs::read(&accounts_file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not the demo's account list", accounts_file.display()))?,
        Err(_) => {
            let made: Vec<Account> = DEMO_ACCOUNTS
                .iter()
                .map(|(name, display, role)| Account {
                    name: (*name).to_owned(),
                    display_name: (*display).to_owned(),
                    role: (*role).to_owned(),
                    password: crate::auth::secret::random_secret()[..12].to_owned(),
                })
                .collect();
            pki::write_file(
                &accounts_file,
                serde_json::to_string_pretty(&made)?.as_bytes(),
                0o600,
            )?;
            made
        }
    };
    let secret_file = dir.join("console-client-secret");
    if !secret_file.exists() {
        pki::write_file(
            &secret_file,
            crate::auth::secret::random_secret().as_bytes(),
            0o600,
        )?;
    }
    let secret = std::fs::read_to_string(&secret_file)?.trim().to_owned();
    let idp_listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    idp_listener.set_nonblocking(true)?;
    let idp_listener = tokio::net::TcpListener::from_std(idp_listener)?;
    let console_listen: std::net::SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let redirect = format!("https://{console_listen}/auth/callback");
    let jwks: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.jwks())?)?;
    let tls = crate::tls::browser_server_config(&layout.gateway_cert(), &layout.gateway_key(), None)?;
    let idp = RunningIdp::spawn(
        idp_listener,
        tls,
        IdpSettings {
            key_pem: std::fs::read(layout.idp_key())?,
            kid: pki::DEMO_TOKEN_KID.to_owned(),
            jwks,
            accounts: accounts.clone(),
            client: RegisteredClient {
                id: CONSOLE_CLIENT_ID.to_owned(),
                secret,
                redirect_url: redirect.clone(),
            },
            attempts_per_minute: 5,
        },
    )?;
    let section = crate::config::ConsoleSection {
        listen: console_listen,
        client_ca: None,
        idle_timeout: crate::config::DEFAULT_CONSOLE_IDLE,
        oidc: crate::config::OidcSection {
            issuer: idp.issuer().parse()?,
            client_id: CONSOLE_CLIENT_ID.to_owned(),
            client_secret_file: secret_file,
            redirect_url: redirect.parse()?,
            ca: layout.apps_ca_cert(),
        },
    };
    Ok((idp, DemoConsole { section, accounts }))
}

fn print_console(addr: Option<std::net::SocketAddr>, accounts: &[Account]) {
    let Some(addr) = addr else { return };
    println!();
    println!("Web console: https://{addr}/ (the certificate is the demo CA's: ca_cert in ready.json)");
    for a in accounts {
        println!(
            "  sign in as {:<11} password {}   ({})",
            a.name, a.password, a.role
        );
    }
}

/// The policy directory the demo imports: the one given, else `policies/`
/// of the working directory, else the built-in sample set written into
/// `DIR/policies` (kept there for later runs and SIGHUP reloads).
fn policy_dir(given: Option<&Path>, dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(given) = given {
        return std::fs::canonicalize(given)
            .with_context(|| format!("policy directory {} not found", given.display()));
    }
    let here = Path::new("policies");
    if here.join("fields.toml").is_file() {
        return Ok(std::fs::canonicalize(here)?);
    }
    let built_in = dir.join("policies");
    crate::policy::samples::write_to(&built_in)
        .with_context(|| format!("cannot write the sample policies to {}", built_in.display()))?;
    tracing::info!(dir = %built_in.display(), "no policies/ here: using the sample policies built into popgate");
    Ok(built_in)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    pki::write_file(&tmp, bytes, 0o600)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn print_instructions(
    layout: &PkiLayout,
    gateway: &str,
    ops: &str,
    ids: &[String],
    ready: &Path,
) -> anyhow::Result<()> {
    let officer = ["officer".to_owned()];
    let call = |app: &str, sub: &str, body: String| -> anyhow::Result<String> {
        let token = pki::mint_demo_token(layout, app, sub, &officer, None, DEMO_TOKEN_TTL_SECS)?;
        Ok(format!(
            "  curl -sS --cacert {} --cert {} --key {} -H 'authorization: Bearer {token}' -H 'content-type: application/json' -d '{body}' https://{gateway}/v1/citizens/lookup",
            layout.apps_ca_cert().display(),
            layout.app_cert(app).display(),
            layout.app_key(app).display()
        ))
    };
    let id = ids.first().map(String::as_str).unwrap_or("079203001234");
    println!("popgate demo is ready ({}).", ready.display());
    println!();
    println!("Look up a (synthetic) citizen as an officer of the one-stop-shop app:");
    println!(
        "{}",
        call(
            "mot-cua",
            "canbo-motcua-01",
            format!(
                r#"{{"personal_id": "{id}", "purpose": "administrative-procedure", "case_ref": "HS-2026-000123"}}"#
            )
        )?
    );
    println!();
    println!("The same citizen as the health app (another purpose, other fields):");
    println!(
        "{}",
        call(
            "y-te",
            "bacsi-01",
            format!(r#"{{"personal_id": "{id}", "purpose": "health-insurance"}}"#)
        )?
    );
    println!();
    println!(
        "Tokens above are valid for {} hours; mint more with",
        DEMO_TOKEN_TTL_SECS / 3600
    );
    println!(
        "  cargo run --release -- token --dir {} --app mot-cua --sub canbo-motcua-02 --role officer",
        layout.dir.parent().unwrap_or(&layout.dir).display()
    );
    println!("Readiness: curl -sS http://{ops}/readyz");
    println!("More sample IDs are in ready.json. Stop with Ctrl-C.");
    Ok(())
}
