//! The `popgate` command line: parses arguments, starts logging, runs the
//! chosen command and maps failure to an exit status. Nothing else lives
//! here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use popgate::client::ConsoleArgs;
use popgate::config::{Config, DEFAULT_PROVINCE};
use popgate::sim::{population::MAX_POPULATION, Faults, SimSettings, Simulator};
use popgate::tls::pki::{self, PkiLayout, SAMPLE_APPS};
use popgate::tls::{self, MutualServerFiles};

#[derive(Parser)]
#[command(
    name = "popgate",
    version,
    about = "The secured gateway between a province's applications and the national population database",
    after_help = "Exit status: 0 on success; 1 when the command failed (one sentence on stderr says why) or a \
check found problems (policy check, audit verify, audit verify-bundle, audit journal inspect); 2 for a command \
line that does not parse; 141 when the reader of the output closed the pipe (popgate … | head)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything on embedded defaults (PKI, simulator, PostgreSQL, gateway) until Ctrl-C/SIGTERM.
    Demo {
        /// Directory for the dev PKI, the PostgreSQL cluster and ready.json.
        #[arg(long, default_value = "var/demo")]
        dir: PathBuf,
        /// Policy directory imported as version 1 when the store is empty
        /// [default: ./policies when present, else the built-in sample set].
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Province (post-2025 code) the demo serves.
        #[arg(long, default_value_t = DEFAULT_PROVINCE)]
        province: u16,
        /// Simulator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulated population size.
        #[arg(long, default_value_t = MAX_POPULATION)]
        population: u32,
        /// Multiplies every rate limit (still enforced), for load tests and benchmarks.
        #[arg(long, default_value_t = 1.0, value_parser = positive)]
        limit_scale: f64,
        /// Share of the simulator's residences coded as before the 2025 reform (old province, district and ward codes).
        #[arg(long, default_value_t = popgate::demo::DEMO_LEGACY_ADDRESS_SHARE, value_parser = fraction)]
        legacy_address_share: f64,
        /// Gateway instances (demo-1 … demo-N) on the one warehouse, each with its own journal and chain, sharing every rate limit in a private redis-server.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
        instances: u16,
    },
    /// Prints an officer token from the demo identity provider in DIR, bound to APP's certificate.
    Token {
        /// A demo directory (or a `certs init` directory).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        app: String,
        /// The officer's id (the token's `sub`).
        #[arg(long)]
        sub: String,
        /// A role; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Ward code of the officer's unit.
        #[arg(long)]
        unit: Option<u32>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        ttl: u64,
    },
    /// The gateway for production use, from a TOML config.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// The national population DB simulator alone.
    Sim(SimArgs),
    /// Development certificates and keys.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// The warehouse's schema.
    Warehouse {
        #[command(subcommand)]
        command: WarehouseCommand,
    },
    /// Access policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The audit log: verify it, and (as an auditor) search, export and report.
    Audit {
        #[command(flatten)]
        console: ConsoleArgs,
        #[command(subcommand)]
        command: popgate::cli::AuditCommand,
    },
    /// Policy administration as a policy admin: list, propose, approve, reject, roll back, diff, simulate.
    Admin {
        #[command(flatten)]
        console: ConsoleArgs,
        #[command(subcommand)]
        command: popgate::cli::AdminCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Creates a development PKI (apps CA, gateway cert, app certs, national-DB CA and certs, audit and pseudonym keys).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing PKI.
        #[arg(long)]
        force: bool,
    },
    /// Issues a new client certificate for an app (replacing its files), signed by the development apps CA.
    Issue {
        /// A `certs init` directory, or a demo directory (its certs/).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        app: String,
    },
    /// Revokes an app's current certificate: publishes a CRL that a running demo picks up within seconds.
    Revoke {
        /// A `certs init` directory, or a demo directory (its certs/).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        app: String,
    },
}

#[derive(Subcommand)]
enum WarehouseCommand {
    /// Applies the schema migrations this build needs, as a role that may create tables; the instances then start with the gateway's role only.
    Migrate {
        /// PostgreSQL URL of the schema's owner.
        #[arg(long)]
        admin_url: String,
        /// CA certificate (PEM) of the warehouse's server certificate: connect with TLS (verify-full).
        #[arg(long)]
        warehouse_ca: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validates a policy directory: exit 0 when valid, else one `FILE:LINE:COL: message` line per problem.
    Check {
        #[arg(default_value = "policies")]
        path: PathBuf,
        #[arg(long, default_value_t = DEFAULT_PROVINCE)]
        province: u16,
    },
}

#[derive(clap::Args)]
struct SimArgs {
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// A directory made by `popgate certs init`; supplies the three files below.
    #[arg(long)]
    certs_dir: Option<PathBuf>,
    /// Server certificate (default: CERTS_DIR/sim.pem).
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA whose client certificates are accepted (default: CERTS_DIR/national-ca.pem).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = MAX_POPULATION, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_POPULATION)))]
    population: u32,
    #[arg(long, default_value_t = DEFAULT_PROVINCE)]
    province: u16,
    /// Added to every answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Uniform extra latency in [0, JITTER).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Fraction of requests answered with HTTP 500.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    error_rate: f64,
    /// Share of residences coded as before the 2025 reform: the 63 provinces' codes, the district (MaQuanHuyen) and the old ward, per household and seed.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    legacy_address_share: f64,
    /// Fraction of requests that stall for --stall-ms first.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    stall_rate: f64,
    #[arg(long, default_value_t = 30_000)]
    stall_ms: u64,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err("must be a positive number".to_owned()),
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err("must be a number from 0 to 1".to_owned()),
    }
}

/// mimalloc instead of the C library's allocator: the request path makes
/// many small short-lived allocations, and glibc's malloc/free/consolidate
/// took about a quarter of the gateway's CPU under load (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `popgate admin list | head`: when the reader closes the pipe, Rust's
    // `println!` panics ("failed printing to stdout: Broken pipe"). End
    // quietly instead, with the status a shell gives a command stopped by
    // SIGPIPE; every other panic keeps the default report.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("POPGATE_LOG")
        .unwrap_or_else(|_| "info,tokio_postgres=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Structured logs for collectors: POPGATE_LOG_FORMAT=json.
    if std::env::var("POPGATE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json().init();
    } else {
        logs.init();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // POPGATE_WORKER_THREADS pins the runtime's size (benchmarks use 1).
    if let Some(n) = std::env::var("POPGATE_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("popgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli.command));
    // Whatever was still running logs before the verdict, never after it:
    // a fatal error is the last line, alone.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("popgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A PKI directory: DIR itself, or a demo directory's `certs/`.
fn certs_dir(dir: &std::path::Path) -> PathBuf {
    if dir.join("certs").is_dir() {
        dir.join("certs")
    } else {
        dir.to_owned()
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo {
            dir,
            policies,
            province,
            seed,
            population,
            limit_scale,
            legacy_address_share,
            instances,
        } => {
            let opts = popgate::demo::DemoOptions {
                instances,
                legacy_address_share,
                dir,
                policies,
                province,
                seed,
                population,
                limit_scale,
            };
            popgate::demo::run(opts, shutdown_signal()).await?;
        }
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let gateway = popgate::gateway::Gateway::start(&config).await?;
            let served = gateway.run_until(shutdown_signal()).await;
            gateway.stop().await;
            served?;
        }
        Command::Sim(args) => run_sim(args).await?,
        Command::Token {
            dir,
            app,
            sub,
            roles,
            unit,
            ttl,
        } => {
            let certs = if dir.join("certs").is_dir() {
                dir.join("certs")
            } else {
                dir
            };
            let token = pki::mint_demo_token(&PkiLayout::new(certs), &app, &sub, &roles, unit, ttl)?;
            println!("{token}");
        }
        Command::Certs {
            command: CertsCommand::Init { dir, force },
        } => {
            pki::init(&dir, SAMPLE_APPS, force)?;
            println!("development PKI written to {}", dir.display());
        }
        Command::Certs {
            command: CertsCommand::Issue { dir, app },
        } => {
            let layout = PkiLayout::new(certs_dir(&dir));
            pki::issue_app(&layout, &app)?;
            println!(
                "issued a new certificate for {app}: {}",
                layout.app_cert(&app).display()
            );
        }
        Command::Certs {
            command: CertsCommand::Revoke { dir, app },
        } => {
            let layout = PkiLayout::new(certs_dir(&dir));
            let serial = pki::revoke_app(&layout, &app)?;
            println!(
                "revoked {app}'s certificate (serial {serial}); CRL: {}",
                layout.apps_crl().display()
            );
        }
        Command::Admin { console, command } => return popgate::cli::run_admin(&console, command).await,
        Command::Audit { console, command } => return popgate::cli::run_audit(&console, command).await,
        Command::Warehouse {
            command:
                WarehouseCommand::Migrate {
                    admin_url,
                    warehouse_ca,
                },
        } => {
            let tls = match &warehouse_ca {
                Some(ca) => popgate::warehouse::WarehouseTls::verify_full(ca)?,
                None => popgate::warehouse::WarehouseTls::Disable,
            };
            popgate::warehouse::migrate_with(&admin_url, &tls).await?;
            println!(
                "the warehouse at {} is at schema version {}",
                popgate::warehouse::destination(&admin_url),
                popgate::warehouse::MIGRATIONS.last().map_or(0, |m| m.0)
            );
        }
        Command::Policy {
            command: PolicyCommand::Check { path, province },
        } => {
            return Ok(match popgate::policy::load_dir(&path, province) {
                Ok(set) => {
                    let files = popgate::policy::read_dir(&path).unwrap_or_default();
                    for warning in popgate::policy::warnings(&files) {
                        println!("{}/{warning}", path.display());
                    }
                    println!(
                        "{}: valid ({} apps, {} fields, {} purposes)",
                        path.display(),
                        set.apps.len(),
                        set.catalog.fields.len(),
                        set.purposes.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(problems) => {
                    println!("{problems}");
                    ExitCode::FAILURE
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    let layout = args.certs_dir.as_ref().map(PkiLayout::new);
    let pick = |given: Option<PathBuf>, from_layout: fn(&PkiLayout) -> PathBuf, flag: &str| {
        given
            .or_else(|| layout.as_ref().map(from_layout))
            .with_context(|| format!("--{flag} or --certs-dir is required"))
    };
    let cert = pick(args.cert, PkiLayout::sim_cert, "cert")?;
    let key = pick(args.key, PkiLayout::sim_key, "key")?;
    let client_ca = pick(args.client_ca, PkiLayout::national_ca_cert, "client-ca")?;
    let tls = tls::mutual_server_config(&MutualServerFiles {
        cert: &cert,
        key: &key,
        client_ca: &client_ca,
        allow_tls12: false,
        alpn: tls::ALPN_H2_H1,
        crls: Vec::new(),
    })?;
    let sim = Arc::new(Simulator::new(&SimSettings {
        seed: args.seed,
        population: args.population,
        province: args.province,
        legacy_address_share: args.legacy_address_share,
        faults: Faults {
            latency: Duration::from_millis(args.latency_ms),
            jitter: Duration::from_millis(args.jitter_ms),
            error_rate: args.error_rate,
            stall_rate: args.stall_rate,
            stall: Duration::from_millis(args.stall_ms),
        },
    }));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("popgate sim: listening on https://{}", listener.local_addr()?);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(sim.run(listener, Arc::new(tls), stop_rx));
    shutdown_signal().await;
    let _ = stop.send(true);
    let _ = task.await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
