//! Limits shared by every instance, in Redis (or Valkey): one script call
//! checks all of one step's limits atomically — GCRA for each rate (the
//! theoretical arrival time in a key that expires when it no longer
//! matters), a HyperLogLog per officer and hour for the distinct-citizen
//! cap — on Redis's clock, and takes nothing unless every limit allows.
//! Keys name apps, officers and purposes, and hold pseudonyms' sketches,
//! never a personal ID.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// One limit of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `burst` requests at once, one more every `interval`.
    Rate {
        key: String,
        interval: Duration,
        burst: u32,
    },
    /// At most `cap` distinct members an hour (approximate, ±0.8 %).
    Distinct { key: String, member: String, cap: u32 },
}

/// How long a call to Redis may take before the local fallback answers.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// The script: KEYS are the limits' keys; ARGV holds, for each in order,
/// its kind ("r" or "d") and two values (interval in microseconds and
/// burst, or cap and the member). Answers {0, 0} when every limit allows
/// (and takes from each), else {index (1-based) of the refusing limit,
/// microseconds to wait}. Times are Redis's, in microseconds.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local hour_left = 3600000000 - (now % 3600000000)
local updates = {}
for i, key in ipairs(KEYS) do
  local kind = ARGV[3 * i - 2]
  if kind == 'r' then
    local interval = tonumber(ARGV[3 * i - 1])
    local burst = tonumber(ARGV[3 * i])
    local tat = tonumber(redis.call('GET', key) or now)
    if tat < now then tat = now end
    local new_tat = tat + interval
    local allow_at = new_tat - interval * burst
    if now < allow_at then
      return {i, allow_at - now}
    end
    updates[#updates + 1] = {'r', key, new_tat, new_tat - now}
  else
    local cap = tonumber(ARGV[3 * i - 1])
    local member = ARGV[3 * i]
    local scratch = key .. ':probe'
    if redis.call('EXISTS', key) == 1 then
      redis.call('COPY', key, scratch, 'REPLACE')
    end
    local new = redis.call('PFADD', scratch, member)
    redis.call('DEL', scratch)
    if new == 1 and redis.call('PFCOUNT', key) >= cap then
      return {i, hour_left}
    end
    if new == 1 then
      updates[#updates + 1] = {'d', key, member, hour_left}
    end
  end
end
for _, u in ipairs(updates) do
  if u[1] == 'r' then
    redis.call('SET', u[2], u[3], 'PX', math.max(1, math.ceil(u[4] / 1000)))
  else
    redis.call('PFADD', u[2], u[3])
    redis.call('PEXPIRE', u[2], math.max(1, math.ceil(u[4] / 1000)))
  end
end
return {0, 0}
"#;

/// The connection to the shared limits.
pub struct SharedLimiter {
    client: redis::Client,
    script: redis::Script,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    prefix: String,
}

/// Redis could not answer.
#[derive(Debug, thiserror::Error)]
#[error("the shared rate limits (Redis) cannot be reached: {0}")]
pub struct Unreachable(pub String);

impl SharedLimiter {
    /// `url` is `redis://` or `rediss://` (TLS), with a password as Redis
    /// URLs carry it; `ca` the CA of a TLS server's certificate. Nothing is
    /// connected until the first check.
    pub fn new(url: &str, ca: Option<&std::path::Path>, prefix: &str) -> anyhow::Result<SharedLimiter> {
        use anyhow::Context;
        let client = if url.starts_with("rediss://") {
            // The redis crate builds its rustls config from the process's
            // default provider: ours.
            let _ = (*crate::tls::provider()).clone().install_default();
            let root_cert = ca
                .map(std::fs::read)
                .transpose()
                .context("cannot read rate_limits.redis_ca")?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert,
                },
            )
        } else {
            redis::Client::open(url)
        }
        .map_err(|e| anyhow::anyhow!("rate_limits.redis_url is not a usable Redis URL: {:?}", e.kind()))?;
        Ok(SharedLimiter {
            client,
            script: redis::Script::new(SCRIPT),
            conn: tokio::sync::Mutex::new(None),
            prefix: prefix.to_owned(),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, Unreachable> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let made = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| Unreachable("connect timed out".into()))?
        .map_err(|e| Unreachable(e.to_string()))?;
        *conn = Some(made.clone());
        Ok(made)
    }

    /// Checks every limit of `checks` at once: `Ok(None)` when all allow
    /// (and each is taken), `Ok(Some((index, wait)))` for the first that
    /// refuses (nothing is taken).
    pub async fn check(&self, checks: &[Check]) -> Result<Option<(usize, Duration)>, Unreachable> {
        if checks.is_empty() {
            return Ok(None);
        }
        let mut conn = self.connection().await?;
        let mut call = self.script.prepare_invoke();
        for c in checks {
            match c {
                Check::Rate { key, interval, burst } => {
                    call.key(format!("{}{key}", self.prefix))
                        .arg("r")
                        .arg(interval.as_micros().max(1) as u64)
                        .arg(*burst);
                }
                Check::Distinct { key, member, cap } => {
                    call.key(format!("{}{key}", self.prefix))
                        .arg("d")
                        .arg(*cap)
                        .arg(member);
                }
            }
        }
        let answered =
            match tokio::time::timeout(REDIS_TIMEOUT, call.invoke_async::<Vec<i64>>(&mut conn)).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(Unreachable(e.to_string())),
                Err(_) => Err(Unreachable("no answer in time".into())),
            };
        let answer = match answered {
            Ok(answer) => answer,
            Err(e) => {
                // A fresh connection next time: one that failed may stay
                // broken after Redis comes back.
                *self.conn.lock().await = None;
                return Err(e);
            }
        };
        match answer.as_slice() {
            [0, _] => Ok(None),
            [i, wait] if *i >= 1 => Ok(Some((
                (*i - 1) as usize,
                Duration::from_micros((*wait).max(0) as u64),
            ))),
            _ => Err(Unreachable("an answer of another shape".into())),
        }
    }
}
