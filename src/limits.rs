//! Rate limits that protect the national database and deter scraping:
//! per app, per officer, per (app, purpose) from the grant, the province's
//! quota at the national database, and a cap on distinct citizens an officer
//! may look up per hour. Built on governor's GCRA limiters with an injected
//! clock, so tests are exact.
//!
//! Memory is bounded: keyed limiters forget idle keys on [`RateLimits::prune`],
//! which the gateway calls periodically, and the distinct-citizen windows
//! hold truncated hashes, never personal IDs.

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

/// All limiters of one gateway instance.
pub struct RateLimits<C: Clock = DefaultClock> {
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

impl RateLimits<DefaultClock> {
    pub fn new(settings: RateSettings) -> Self {
        Self::with_clock(settings, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(settings: RateSettings, clock: C) -> Self {
        let s = settings.scale;
        RateLimits {
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
        let limits = RateLimits::with_clock(settings(), clock.clone());
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
        let limits = RateLimits::with_clock(settings(), clock.clone());
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
        let limits = RateLimits::with_clock(settings(), clock.clone());
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
        let limits = RateLimits::with_clock(
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
