//! A private PostgreSQL cluster started from the machine's server binaries:
//! for `popgate demo`, for `serve` without a configured warehouse, and as a
//! throwaway server for tests.
//!
//! PostgreSQL refuses to run as root; when we are root the cluster is owned
//! and run by an unprivileged user (`postgres` if it exists, else `nobody`),
//! and its directory is placed where that user can reach it. It listens on
//! 127.0.0.1 only, without a Unix socket, with password (SCRAM) logins.

use std::fs;
use std::net::TcpListener as StdListener;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::distributions::{Alphanumeric, DistString};
use sha2::{Digest, Sha256};

/// The superuser of an embedded cluster.
pub const ADMIN_ROLE: &str = "popgate_admin";
/// The gateway's own login: INSERT-only on the audit tables.
pub const GATEWAY_ROLE: &str = "popgate_gateway";
pub const DATABASE: &str = "popgate";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The embedded cluster's settings beyond PostgreSQL's defaults, for a
/// warehouse that takes a steady stream of appended rows in small
/// transactions and answers a few heavier reads.
const SETTINGS: &[&str] = &[
    // Every gateway pool (16), the rules, the console and the CLI.
    "max_connections=200",
    // Checkpoints every 15 minutes rather than every 5, or 1 GB of WAL:
    // fewer full-page images of the same index pages in the WAL.
    "checkpoint_timeout=15min",
    "max_wal_size=4GB",
    // The rules' and reports' aggregates are short; compiling them to
    // machine code costs more than it saves on two cores.
    "jit=off",
    // Bodies of new tables compress with lz4 (migration 9 sets it on ours).
    "default_toast_compression=lz4",
];

/// Where the server binaries are: `PATH`, `pg_config --bindir`, then
/// `/usr/lib/postgresql/*/bin` (newest first).
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let has_all = |dir: &Path| {
        dir.join("initdb").exists() && dir.join("postgres").exists() && dir.join("pg_ctl").exists()
    };
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_all(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_all(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut candidates: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    candidates.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates
        .into_iter()
        .rev()
        .find(|d| has_all(d))
        .context("PostgreSQL server binaries not found (install them: apt-get install postgresql)")
}

/// The account the cluster runs as: ourselves, or when root an
/// unprivileged user.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
    drop_privileges: bool,
}

fn run_as() -> anyhow::Result<RunAs> {
    let me = fs::metadata("/proc/self").context("cannot read /proc/self")?;
    use std::os::unix::fs::MetadataExt;
    if me.uid() != 0 {
        return Ok(RunAs {
            uid: me.uid(),
            gid: me.gid(),
            drop_privileges: false,
        });
    }
    let passwd = fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    for wanted in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let cols: Vec<&str> = line.split(':').collect();
            if cols.len() > 3 && cols[0] == wanted {
                if let (Ok(uid), Ok(gid)) = (cols[2].parse(), cols[3].parse()) {
                    return Ok(RunAs {
                        uid,
                        gid,
                        drop_privileges: true,
                    });
                }
            }
        }
    }
    bail!("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")
}

/// Whether `uid` can traverse every ancestor of `path`.
fn reachable_by(path: &Path, who: RunAs) -> bool {
    use std::os::unix::fs::MetadataExt;
    if !who.drop_privileges {
        return true;
    }
    let Ok(abs) = std::path::absolute(path) else {
        return false;
    };
    abs.ancestors().skip(1).all(|dir| match fs::metadata(dir) {
        Ok(m) => {
            let mode = m.mode();
            (m.uid() == who.uid && mode & 0o100 != 0)
                || (m.gid() == who.gid && mode & 0o010 != 0)
                || mode & 0o001 != 0
        }
        Err(_) => true, // does not exist yet: created by us below, with o+x
    })
}

/// Passwords of an embedded cluster, kept beside it (owner-only).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub admin_password: String,
    pub gateway_password: String,
}

/// A running embedded cluster. Dropping it stops the server.
pub struct EmbeddedPostgres {
    base: PathBuf,
    bin: PathBuf,
    who: RunAs,
    port: u16,
    credentials: Credentials,
    child: Option<Child>,
}

impl EmbeddedPostgres {
    /// Starts (creating on first use) the cluster that belongs to `home`.
    /// The cluster lives in `home/pg` when the server's user can reach it,
    /// else in a directory of the system's temp dir named after `home`.
    pub fn start(home: &Path) -> anyhow::Result<EmbeddedPostgres> {
        let bin = find_bin_dir()?;
        let who = run_as()?;
        fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
        let home = fs::canonicalize(home)?;
        let base = if reachable_by(&home.join("pg"), who) {
            home.join("pg")
        } else {
            let digest = Sha256::digest(home.to_string_lossy().as_bytes());
            let tag = crate::audit::event::hex(&digest[..8]);
            std::env::temp_dir().join(format!("popgate-pg-{tag}"))
        };
        let creds_path = home.join("warehouse-credentials.json");
        let data = base.join("data");
        let fresh = !data.join("PG_VERSION").exists();
        let credentials = if fresh {
            let gen = || Alphanumeric.sample_string(&mut rand::rngs::OsRng, 32);
            let c = Credentials {
                admin_password: gen(),
                gateway_password: gen(),
            };
            crate::tls::pki::write_file(&creds_path, &serde_json::to_vec_pretty(&c)?, 0o600)?;
            c
        } else {
            let text = fs::read_to_string(&creds_path).with_context(|| {
                format!(
                    "cluster at {} exists but {} is missing",
                    base.display(),
                    creds_path.display()
                )
            })?;
            serde_json::from_str(&text).context("unreadable warehouse credentials")?
        };
        let mut pg = EmbeddedPostgres {
            base,
            bin,
            who,
            port: 0,
            credentials,
            child: None,
        };
        if fresh {
            pg.init()?;
        }
        pg.launch()?;
        Ok(pg)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if self.who.drop_privileges {
            cmd.uid(self.who.uid).gid(self.who.gid);
        }
        cmd.env_remove("PGDATA").env("LC_ALL", "C.UTF-8");
        cmd
    }

    fn init(&self) -> anyhow::Result<()> {
        let _ = fs::remove_dir_all(&self.base);
        fs::create_dir_all(&self.base)?;
        fs::set_permissions(&self.base, fs::Permissions::from_mode(0o700))?;
        if self.who.drop_privileges {
            chown(&self.base, Some(self.who.uid), Some(self.who.gid))?;
        }
        let pwfile = self.base.join("pwfile");
        fs::write(&pwfile, format!("{}\n", self.credentials.admin_password))?;
        if self.who.drop_privileges {
            chown(&pwfile, Some(self.who.uid), Some(self.who.gid))?;
        }
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.base.join("data"))
            .args([
                "-U",
                ADMIN_ROLE,
                "-E",
                "UTF8",
                "--no-locale",
                "--auth=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null())
            .output()
            .context("cannot run initdb")?;
        let _ = fs::remove_file(&pwfile);
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Starts the server; when it exits at once because another process
    /// took its port in the meantime (tests start clusters side by side),
    /// tries again on another port.
    fn launch(&mut self) -> anyhow::Result<()> {
        let mut attempt = 0;
        loop {
            match self.launch_once() {
                Err(e) if attempt < 2 && self.port_was_taken() => {
                    attempt += 1;
                    tracing::debug!(error = %e, "the embedded PostgreSQL's port was taken; trying another");
                    let _ = fs::remove_file(self.base.join("port"));
                }
                other => return other,
            }
        }
    }

    /// Whether the last start failed on its listening address.
    fn port_was_taken(&self) -> bool {
        fs::read_to_string(self.base.join("postgres.log"))
            .is_ok_and(|log| log.contains("could not bind") || log.contains("Address already in use"))
    }

    fn launch_once(&mut self) -> anyhow::Result<()> {
        let data = self.base.join("data");
        // A server left running by a killed process would hold the data dir.
        if data.join("postmaster.pid").exists() {
            let _ = self
                .command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(&data)
                .args(["-m", "fast", "-w", "-t", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // The same port as last time when it is free, so that clients keep
        // their URL across restarts of the cluster.
        let port_file = self.base.join("port");
        let previous = fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok());
        self.port = match previous {
            Some(p) if StdListener::bind(("127.0.0.1", p)).is_ok() => p,
            _ => free_port()?,
        };
        fs::write(&port_file, self.port.to_string())?;
        let log = fs::File::create(self.base.join("postgres.log"))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-k", ""])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(SETTINGS.iter().flat_map(|s| ["-c", s]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start postgres")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = fs::read_to_string(self.base.join("postgres.log")).unwrap_or_default();
                bail!(
                    "postgres exited with {status}: {}",
                    log.lines().last().unwrap_or("")
                );
            }
            // Ready when *our* postmaster says so in its pid file, as
            // `pg_ctl -w` judges it: a connect alone could reach another
            // cluster that took the port first (tests start them side by
            // side), whose logins would then fail until the deadline.
            if self.postmaster_ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("postgres did not start within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `postmaster.pid` names our child and says "ready": its first
    /// line is the pid, its eighth the status (PostgreSQL's
    /// `LOCK_FILE_LINE_PM_STATUS`).
    fn postmaster_ready(&self) -> bool {
        let Some(pid) = self.pid() else { return false };
        let Ok(text) = fs::read_to_string(self.base.join("data").join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = text.lines().collect();
        lines.first().is_some_and(|l| l.trim() == pid.to_string())
            && lines.get(7).is_some_and(|l| l.trim() == "ready")
    }

    /// The server's (postmaster's) process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.base.join("data")
    }

    /// URL of the superuser on the `popgate` database.
    pub fn admin_url(&self) -> String {
        format!(
            "postgres://{ADMIN_ROLE}:{}@127.0.0.1:{}/{DATABASE}",
            self.credentials.admin_password, self.port
        )
    }

    /// URL of the gateway's restricted role on the `popgate` database.
    pub fn gateway_url(&self) -> String {
        format!(
            "postgres://{GATEWAY_ROLE}:{}@127.0.0.1:{}/{DATABASE}",
            self.credentials.gateway_password, self.port
        )
    }

    /// Starts (or restarts) the cluster in `home` off the async runtime's
    /// threads and provisions it: what the gateway, the tests and the
    /// benchmarks each need before they connect.
    pub async fn start_provisioned(home: &Path) -> anyhow::Result<EmbeddedPostgres> {
        let home = home.to_owned();
        let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&home)).await??;
        pg.provision().await?;
        Ok(pg)
    }

    /// Creates the database and the gateway role if they do not exist yet.
    pub async fn provision(&self) -> anyhow::Result<()> {
        let url = format!(
            "postgres://{ADMIN_ROLE}:{}@127.0.0.1:{}/postgres",
            self.credentials.admin_password, self.port
        );
        let deadline = Instant::now() + START_TIMEOUT;
        let client = loop {
            match super::connect(&url).await {
                Ok(c) => break c,
                // The port opens slightly before logins are accepted.
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(e.into()),
            }
        };
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
            .await?;
        if exists.is_none() {
            client
                .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                .await?;
        }
        let role = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&GATEWAY_ROLE])
            .await?;
        if role.is_none() {
            // The password is ours (alphanumeric), so quoting it is safe.
            client
                .batch_execute(&format!(
                    "CREATE ROLE {GATEWAY_ROLE} LOGIN PASSWORD '{}'",
                    self.credentials.gateway_password
                ))
                .await?;
        }
        Ok(())
    }

    /// Stops the server (fast shutdown: sessions are ended, data is flushed).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let stopped = self
            .command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(self.base.join("data"))
            .args(["-m", "fast", "-w", "-t", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Serves TLS only from now on: installs `cert` and `key` (PEM) as the
    /// server's certificate, refuses logins without TLS, and restarts.
    /// For tests and deployments that reach the cluster over a network.
    pub fn require_tls(&mut self, cert: &str, key: &str) -> anyhow::Result<()> {
        let data = self.data_dir();
        for (name, text) in [("server.crt", cert), ("server.key", key)] {
            let path = data.join(name);
            fs::write(&path, text)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            if self.who.drop_privileges {
                chown(&path, Some(self.who.uid), Some(self.who.gid))?;
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf)?;
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        fs::write(&conf, text)?;
        let hba = data.join("pg_hba.conf");
        let rules: String = fs::read_to_string(&hba)?
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        fs::write(&hba, rules)?;
        self.stop();
        self.launch()
    }

    /// Starts the server again after [`EmbeddedPostgres::stop`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_none() {
            self.launch()?;
        }
        Ok(())
    }

    /// Starts the server again if its process has ended (killed, crashed);
    /// true when it had to.
    pub fn revive(&mut self) -> anyhow::Result<bool> {
        if self.is_running() {
            return Ok(false);
        }
        if let Some(mut dead) = self.child.take() {
            let _ = dead.wait();
        }
        self.launch()?;
        Ok(true)
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
