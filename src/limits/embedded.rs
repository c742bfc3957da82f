//! A private `redis-server` for the demo and the tests, started like the
//! embedded PostgreSQL: loopback only, a password, no persistence, its
//! files in a directory of its own, stopped (and waited for) on
//! [`EmbeddedRedis::stop`] or drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Where Debian's `redis-server` package puts the server.
const SEARCH: &[&str] = &[
    "/usr/bin/redis-server",
    "/usr/local/bin/redis-server",
    "/usr/sbin/redis-server",
];

/// A running private Redis.
pub struct EmbeddedRedis {
    child: Option<Child>,
    pub port: u16,
    password: String,
    dir: PathBuf,
}

/// The server binary, or a sentence saying how to get one.
pub fn redis_server() -> anyhow::Result<PathBuf> {
    SEARCH
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("redis-server"))
                    .find(|p| p.is_file())
            })
        })
        .context("redis-server is not installed: install the Debian package redis-server (shared rate limits of several instances need it)")
}

/// `binary` serving as `conf` says, its output discarded (it logs to its file).
fn spawn(binary: &Path, conf: &Path) -> anyhow::Result<Child> {
    Command::new(binary)
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

impl EmbeddedRedis {
    /// Starts a server with its files in `dir` on a free loopback port,
    /// and waits until it answers.
    pub async fn start(dir: &Path) -> anyhow::Result<EmbeddedRedis> {
        let binary = redis_server()?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let password = crate::auth::secret::random_secret();
        let mut last = None;
        // A port taken between choosing and binding: try another.
        for _ in 0..5 {
            let port = crate::warehouse::embedded::free_port()?;
            let conf = dir.join("redis.conf");
            // The password goes in an owner-only file, not on a command line.
            crate::tls::pki::write_file(
                &conf,
                format!(
                    "bind 127.0.0.1\nport {port}\nprotected-mode yes\nrequirepass {password}\nsave \"\"\nappendonly no\ndir {}\nlogfile {}\ndaemonize no\n",
                    dir.display(),
                    dir.join("redis.log").display()
                )
                .as_bytes(),
                0o600,
            )?;
            let mut redis = EmbeddedRedis {
                child: Some(spawn(&binary, &conf)?),
                port,
                password: password.clone(),
                dir: dir.to_owned(),
            };
            match redis.wait_ready(Duration::from_secs(10)).await {
                Ok(()) => return Ok(redis),
                Err(e) => {
                    redis.stop();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// `redis://:PASSWORD@127.0.0.1:PORT/`: the password is in the URL as
    /// Redis clients take it; keep it out of logs.
    pub fn url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/", self.password, self.port)
    }

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let client = redis::Client::open(self.url())?;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    anyhow::bail!(
                        "redis-server exited at start ({status}); see {}",
                        self.dir.join("redis.log").display()
                    );
                }
            }
            if let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_millis(500),
                client.get_multiplexed_async_connection(),
            )
            .await
            {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not answer in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts it again on the same port and password (after [`stop`](Self::stop)).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.child = Some(spawn(&redis_server()?, &self.dir.join("redis.conf"))?);
        self.wait_ready(Duration::from_secs(10)).await
    }
}

impl Drop for EmbeddedRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
