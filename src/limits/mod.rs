//! Rate limits that protect the national database and deter scraping:
//! per app, per officer, per (app, purpose) from the grant, the province's
//! quota at the national database, and a cap on distinct citizens an officer
//! may look up per hour.
//!
//! [`RateLimits`] enforces them for the whole deployment: in Redis when
//! `[rate_limits] redis_url` is set ([`shared`]: every instance counts
//! against the same limits), else — and whenever Redis cannot answer — in
//! this instance with [`LocalLimits`], each limit divided by the number of
//! live instances, so that the province's totals hold either way.
//!
//! [`LocalLimits`] is built on governor's GCRA limiters with an injected
//! clock, so tests are exact. Memory is bounded: keyed limiters forget idle
//! keys on [`RateLimits::prune`], which the gateway calls periodically, and
//! the distinct-citizen windows hold truncated hashes, never personal IDs.

pub mod embedded;
pub mod shared;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};

type Keyed<C> = RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;
/// Per-grant limiters by "app␟purpose", with the per-minute rate each was built for.
type GrantLimiters<C> = Mutex<HashMap<String, (u32, Arc<Direct<C>>)>>;

const HOUR: Duration = Duration::from_secs(3600);

/// Configured limits, before scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSettings {
    pub per_app_per_minute: u32,
    pub per_officer_per_minute: u32,
    /// The quota the national database grants the whole province.
    pub upstream_per_second: u32,
    pub distinct_citizens_per_officer_per_hour: u32,
    /// Multiplies every limit (`popgate demo --limit-scale N`); limits stay enforced.
    pub scale: f64,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    App,
    Officer,
    AppPurpose,
    Upstream,
    DistinctCitizens,
}

impl LimitKind {
    pub fn describe(self) -> &'static str {
        match self {
            LimitKind::App => "the app's request rate limit",
            LimitKind::Officer => "the officer's request rate limit",
            LimitKind::AppPurpose => "the app's rate limit for this purpose",
            LimitKind::Upstream => "the province's quota at the national database",
            LimitKind::DistinctCitizens => "the officer's limit on distinct citizens per hour",
        }
    }
}

/// A refusal: which limit, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub kind: LimitKind,
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds to wait, at least one (for `retry-after`).
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_millis().div_ceil(1000) as u64).max(1)
    }
}

struct DistinctWindow<I> {
    started: I,
    seen: HashSet<[u8; 16]>,
}

/// The limiters of one instance, for its share of every limit.
pub struct LocalLimits<C: Clock = DefaultClock> {
    clock: C,
    settings: RateSettings,
    per_app: Keyed<C>,
    per_officer: Keyed<C>,
    per_grant: GrantLimiters<C>,
    upstream: Direct<C>,
    distinct: Mutex<HashMap<String, DistinctWindow<C::Instant>>>,
}

fn scaled(n: u32, scale: f64) -> NonZeroU32 {
    let v = (f64::from(n) * scale).round().clamp(1.0, f64::from(u32::MAX)) as u32;
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

impl LocalLimits<DefaultClock> {
    pub fn new(settings: RateSettings) -> Self {
        Self::with_clock(settings, DefaultClock::default())
    }
}

impl<C: Clock + Clone> LocalLimits<C> {
    pub fn with_clock(settings: RateSettings, clock: C) -> Self {
        let s = settings.scale;
        LocalLimits {
            per_app: RateLimiter::dashmap_with_clock(
                Quota::per_minute(scaled(settings.per_app_per_minute, s)),
                clock.clone(),
            ),
            per_officer: RateLimiter::dashmap_with_clock(
                Quota::per_minute(scaled(settings.per_officer_per_minute, s)),
                clock.clone(),
            ),
            upstream: RateLimiter::direct_with_clock(
                Quota::per_second(scaled(settings.upstream_per_second, s)),
                clock.clone(),
            ),
            per_grant: Mutex::new(HashMap::new()),
            distinct: Mutex::new(HashMap::new()),
            clock,
            settings,
        }
    }

    fn refuse(&self, kind: LimitKind, not_until: governor::NotUntil<C::Instant>) -> Limited {
        Limited {
            kind,
            retry_after: not_until.wait_time_from(self.clock.now()),
        }
    }

    pub fn check_app(&self, app: &str) -> Result<(), Limited> {
        self.per_app
            .check_key(&app.to_owned())
            .map_err(|n| self.refuse(LimitKind::App, n))
    }

    pub fn check_officer(&self, app: &str, officer: &str) -> Result<(), Limited> {
        let key = format!("{app}\u{1f}{officer}");
        self.per_officer
            .check_key(&key)
            .map_err(|n| self.refuse(LimitKind::Officer, n))
    }

    /// The grant's own per-minute limit, when it sets one.
    pub fn check_grant(&self, app: &str, purpose: &str, per_minute: Option<u32>) -> Result<(), Limited> {
        let Some(per_minute) = per_minute else {
            return Ok(());
        };
        let key = format!("{app}\u{1f}{purpose}");
        let limiter = {
            let mut map = self.per_grant.lock().unwrap_or_else(|p| p.into_inner());
            let entry = map
                .entry(key)
                .or_insert_with(|| (0, Arc::new(self.direct_per_minute(per_minute))));
            // A policy change of the limit starts a fresh limiter.
            if entry.0 != per_minute {
                *entry = (per_minute, Arc::new(self.direct_per_minute(per_minute)));
            }
            entry.1.clone()
        };
        limiter.check().map_err(|n| self.refuse(LimitKind::AppPurpose, n))
    }

    fn direct_per_minute(&self, per_minute: u32) -> Direct<C> {
        RateLimiter::direct_with_clock(
            Quota::per_minute(scaled(per_minute, self.settings.scale)),
            self.clock.clone(),
        )
    }

    pub fn check_upstream(&self) -> Result<(), Limited> {
        self.upstream
            .check()
            .map_err(|n| self.refuse(LimitKind::Upstream, n))
    }

    /// Counts `citizen` against the officer's hourly cap of distinct
    /// citizens; looking the same citizen up again costs nothing.
    /// Counts `citizen` (the person's pseudonym) among the distinct people
    /// `officer` of `app` saw this hour; refused past the cap.
    pub fn check_distinct(&self, app: &str, officer: &str, citizen: &str) -> Result<(), Limited> {
        let cap = scaled(
            self.settings.distinct_citizens_per_officer_per_hour,
            self.settings.scale,
        )
        .get() as usize;
        let digest = Sha256::digest(citizen.as_bytes());
        let mut short = [0u8; 16];
        short.copy_from_slice(&digest[..16]);
        let now = self.clock.now();
        let mut map = self.distinct.lock().unwrap_or_else(|p| p.into_inner());
        let window = map
            .entry(format!("{app}\u{1f}{officer}"))
            .or_insert_with(|| DistinctWindow {
                started: now,
                seen: HashSet::new(),
            });
        let age: Duration = now.duration_since(window.started).into();
        if age >= HOUR {
            *window = DistinctWindow {
                started: now,
                seen: HashSet::new(),
            };
        }
        if window.seen.contains(&short) {
            return Ok(());
        }
        if window.seen.len() >= cap {
            let age: Duration = now.duration_since(window.started).into();
            return Err(Limited {
                kind: LimitKind::DistinctCitizens,
                retry_after: HOUR.saturating_sub(age),
            });
        }
        window.seen.insert(short);
        Ok(())
    }

    /// Forgets keys that are back to a full quota and expired windows.
    pub fn prune(&self) {
        for keyed in [&self.per_app, &self.per_officer] {
            keyed.retain_recent();
            keyed.shrink_to_fit();
        }
        let now = self.clock.now();
        let mut map = self.distinct.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| Duration::from(now.duration_since(w.started)) < HOUR);
        map.shrink_to_fit();
    }

    /// Keys held by the keyed limiters and windows (a metric).
    pub fn tracked_keys(&self) -> usize {
        let distinct = self.distinct.lock().map(|m| m.len()).unwrap_or(0);
        self.per_app.len() + self.per_officer.len() + distinct
    }
}

/// Where the deployment's limits are enforced at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitsMode {
    /// One instance, no Redis configured: its own limiters.
    Local,
    /// In Redis, for every instance together.
    Shared,
    /// Redis configured but not answering: each instance enforces its
    /// share (every limit divided by the live instances).
    Fallback,
}

impl LimitsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitsMode::Local => "local",
            LimitsMode::Shared => "shared",
            LimitsMode::Fallback => "fallback",
        }
    }
}

/// The deployment's limits, as this instance enforces them: see the module
/// documentation.
pub struct RateLimits {
    settings: RateSettings,
    /// This instance's limiters, each limit divided by `live`.
    local: arc_swap::ArcSwap<LocalLimits>,
    live: std::sync::atomic::AtomicU32,
    shared: Option<shared::SharedLimiter>,
    falling_back: std::sync::atomic::AtomicBool,
    fallbacks: std::sync::atomic::AtomicU64,
    /// While falling back, Redis is asked again only after this (ms since
    /// `started`), so that requests do not each wait for it.
    retry_at: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

/// While Redis does not answer, how often it is asked again.
const REDIS_RETRY: Duration = Duration::from_secs(1);

/// The GCRA of `n` requests per `period`, scaled.
fn rate(key: String, n: u32, scale: f64, period: Duration) -> shared::Check {
    let n = scaled(n, scale).get();
    shared::Check::Rate {
        key,
        interval: period / n,
        burst: n,
    }
}

impl RateLimits {
    /// Limits of this instance alone.
    pub fn new(settings: RateSettings) -> RateLimits {
        RateLimits {
            local: arc_swap::ArcSwap::from_pointee(LocalLimits::new(settings)),
            settings,
            live: std::sync::atomic::AtomicU32::new(1),
            shared: None,
            falling_back: std::sync::atomic::AtomicBool::new(false),
            fallbacks: std::sync::atomic::AtomicU64::new(0),
            retry_at: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }

    /// Limits shared in Redis by every instance.
    pub fn shared(settings: RateSettings, limiter: shared::SharedLimiter) -> RateLimits {
        RateLimits {
            shared: Some(limiter),
            ..RateLimits::new(settings)
        }
    }

    /// The instances that share the limits (from their heartbeats): the
    /// fallback gives this instance 1/`n` of every limit.
    pub fn set_live_instances(&self, n: u32) {
        use std::sync::atomic::Ordering;
        let n = n.max(1);
        if self.shared.is_none() || self.live.swap(n, Ordering::AcqRel) == n {
            return;
        }
        tracing::info!(
            instances = n,
            "live instances changed: the fallback limits are each limit / {n}"
        );
        self.local.store(Arc::new(LocalLimits::new(RateSettings {
            scale: self.settings.scale / f64::from(n),
            ..self.settings
        })));
    }

    pub fn live_instances(&self) -> u32 {
        self.live.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn mode(&self) -> LimitsMode {
        match &self.shared {
            None => LimitsMode::Local,
            Some(_) if self.falling_back.load(std::sync::atomic::Ordering::Acquire) => LimitsMode::Fallback,
            Some(_) => LimitsMode::Shared,
        }
    }

    /// Checks answered by the local fallback because Redis could not (a metric).
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks Redis; `None` when it cannot answer (then the local share
    /// answers), logged once per change of state.
    async fn ask_shared(&self, checks: &[(LimitKind, shared::Check)]) -> Option<Result<(), Limited>> {
        use std::sync::atomic::Ordering;
        let limiter = self.shared.as_ref()?;
        let now = self.started.elapsed().as_millis() as u64;
        if self.falling_back.load(Ordering::Acquire) && now < self.retry_at.load(Ordering::Acquire) {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let list: Vec<shared::Check> = checks.iter().map(|(_, c)| c.clone()).collect();
        match limiter.check(&list).await {
            Ok(answer) => {
                if self.falling_back.swap(false, Ordering::AcqRel) {
                    tracing::info!("the shared rate limits answer again: enforced in Redis");
                }
                Some(match answer {
                    None => Ok(()),
                    Some((i, wait)) => Err(Limited {
                        kind: checks.get(i).map_or(LimitKind::App, |(k, _)| *k),
                        retry_after: wait,
                    }),
                })
            }
            Err(error) => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                self.retry_at
                    .store(now + REDIS_RETRY.as_millis() as u64, Ordering::Release);
                if !self.falling_back.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        %error,
                        instances = self.live_instances(),
                        "enforcing this instance's share of every rate limit until Redis answers"
                    );
                }
                None
            }
        }
    }

    /// The app's and the officer's request rates (every request).
    pub async fn check_caller(&self, app: &str, officer: &str) -> Result<(), Limited> {
        let s = &self.settings;
        if self.shared.is_some() {
            let checks = [
                (
                    LimitKind::App,
                    rate(format!("app:{app}"), s.per_app_per_minute, s.scale, MINUTE),
                ),
                (
                    LimitKind::Officer,
                    rate(
                        format!("officer:{app}:{officer}"),
                        s.per_officer_per_minute,
                        s.scale,
                        MINUTE,
                    ),
                ),
            ];
            if let Some(answer) = self.ask_shared(&checks).await {
                return answer;
            }
        }
        let local = self.local.load();
        local
            .check_app(app)
            .and_then(|()| local.check_officer(app, officer))
    }

    /// Before the national database is asked: the grant's own rate, the
    /// officer's distinct-citizen cap for `citizen`, and the province's
    /// quota, in that order.
    pub async fn check_release(
        &self,
        app: &str,
        officer: &str,
        purpose: &str,
        per_minute: Option<u32>,
        citizen: Option<&str>,
    ) -> Result<(), Limited> {
        let s = &self.settings;
        if self.shared.is_some() {
            let mut checks = Vec::with_capacity(3);
            if let Some(n) = per_minute {
                checks.push((
                    LimitKind::AppPurpose,
                    rate(format!("grant:{app}:{purpose}"), n, s.scale, MINUTE),
                ));
            }
            if let Some(c) = citizen {
                checks.push((LimitKind::DistinctCitizens, self.distinct(app, officer, c)));
            }
            checks.push((
                LimitKind::Upstream,
                rate(
                    "upstream".to_owned(),
                    s.upstream_per_second,
                    s.scale,
                    Duration::from_secs(1),
                ),
            ));
            if let Some(answer) = self.ask_shared(&checks).await {
                return answer;
            }
        }
        let local = self.local.load();
        local.check_grant(app, purpose, per_minute)?;
        if let Some(c) = citizen {
            local.check_distinct(app, officer, c)?;
        }
        local.check_upstream()
    }

    /// Every person an answer carries counts toward the officer's cap.
    pub async fn check_subjects(&self, app: &str, officer: &str, citizens: &[String]) -> Result<(), Limited> {
        if citizens.is_empty() {
            return Ok(());
        }
        if self.shared.is_some() {
            let checks: Vec<(LimitKind, shared::Check)> = citizens
                .iter()
                .map(|c| (LimitKind::DistinctCitizens, self.distinct(app, officer, c)))
                .collect();
            if let Some(answer) = self.ask_shared(&checks).await {
                return answer;
            }
        }
        let local = self.local.load();
        citizens
            .iter()
            .try_for_each(|c| local.check_distinct(app, officer, c))
    }

    fn distinct(&self, app: &str, officer: &str, citizen: &str) -> shared::Check {
        shared::Check::Distinct {
            key: format!("distinct:{app}:{officer}"),
            // A pseudonym already; shortened, as the local window keeps it.
            member: citizen.chars().take(32).collect(),
            cap: scaled(
                self.settings.distinct_citizens_per_officer_per_hour,
                self.settings.scale,
            )
            .get(),
        }
    }

    pub fn prune(&self) {
        self.local.load().prune();
    }

    pub fn tracked_keys(&self) -> usize {
        self.local.load().tracked_keys()
    }
}

const MINUTE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn settings() -> RateSettings {
        RateSettings {
            per_app_per_minute: 3,
            per_officer_per_minute: 2,
            upstream_per_second: 5,
            distinct_citizens_per_officer_per_hour: 2,
            scale: 1.0,
        }
    }

    fn id(n: u32) -> String {
        format!("pseudonym-{n}")
    }

    #[test]
    fn per_app_limit_refuses_the_fourth_call_and_recovers() {
        let clock = FakeRelativeClock::default();
        let limits = LocalLimits::with_clock(settings(), clock.clone());
        for _ in 0..3 {
            assert!(limits.check_app("mot-cua").is_ok());
        }
        let refused = limits.check_app("mot-cua").expect_err("limited");
        assert_eq!(refused.kind, LimitKind::App);
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        assert_eq!(refused.retry_after_secs(), 20);
        // Another app is not affected.
        assert!(limits.check_app("y-te").is_ok());
        clock.advance(Duration::from_secs(20));
        assert!(limits.check_app("mot-cua").is_ok());
        assert!(limits.check_app("mot-cua").is_err());
    }

    #[test]
    fn officer_grant_and_upstream_limits_are_separate() {
        let clock = FakeRelativeClock::default();
        let limits = LocalLimits::with_clock(settings(), clock.clone());
        assert!(limits.check_officer("a", "o1").is_ok());
        assert!(limits.check_officer("a", "o1").is_ok());
        assert_eq!(
            limits.check_officer("a", "o1").map_err(|l| l.kind),
            Err(LimitKind::Officer)
        );
        assert!(limits.check_officer("a", "o2").is_ok());
        assert!(limits.check_grant("a", "p", None).is_ok());
        assert!(limits.check_grant("a", "p", Some(1)).is_ok());
        assert_eq!(
            limits.check_grant("a", "p", Some(1)).map_err(|l| l.kind),
            Err(LimitKind::AppPurpose)
        );
        for _ in 0..5 {
            assert!(limits.check_upstream().is_ok());
        }
        let refused = limits.check_upstream().expect_err("quota");
        assert_eq!(
            (refused.kind, refused.retry_after),
            (LimitKind::Upstream, Duration::from_millis(200))
        );
        assert_eq!(refused.retry_after_secs(), 1);
    }

    #[test]
    fn distinct_citizens_cap_counts_each_citizen_once_per_hour() {
        let clock = FakeRelativeClock::default();
        let limits = LocalLimits::with_clock(settings(), clock.clone());
        assert!(limits.check_distinct("a", "o", &id(1)).is_ok());
        assert!(limits.check_distinct("a", "o", &id(2)).is_ok());
        assert!(limits.check_distinct("a", "o", &id(1)).is_ok());
        clock.advance(Duration::from_secs(600));
        let refused = limits.check_distinct("a", "o", &id(3)).expect_err("capped");
        assert_eq!(refused.kind, LimitKind::DistinctCitizens);
        assert_eq!(refused.retry_after, Duration::from_secs(3000));
        clock.advance(Duration::from_secs(3000));
        assert!(limits.check_distinct("a", "o", &id(3)).is_ok());
    }

    #[test]
    fn scale_multiplies_and_prune_bounds_memory() {
        let clock = FakeRelativeClock::default();
        let limits = LocalLimits::with_clock(
            RateSettings {
                scale: 2.0,
                ..settings()
            },
            clock.clone(),
        );
        for _ in 0..6 {
            assert!(limits.check_app("x").is_ok());
        }
        assert!(limits.check_app("x").is_err());
        for n in 0..1000 {
            let _ = limits.check_officer("a", &format!("officer-{n}"));
        }
        assert!(limits.tracked_keys() >= 1000);
        clock.advance(Duration::from_secs(3600));
        limits.prune();
        assert_eq!(limits.tracked_keys(), 0);
    }
}
