//! Alert rules over the audit event stream. They run on the events the
//! warehouse holds, each instance's chain read once, in seq order, after a
//! watermark kept in the warehouse; a tick takes a lock so that one gateway
//! of a deployment runs them at a time. An alert is stored once (its
//! `dedup_key`: the rule, who, and the hour, day or event it is about) with
//! the audit ids that support it, and names officers and apps, never a
//! citizen.
//!
//! The rules (names as in `/metrics`, `GET /audit/v1/alerts?rule=` and the
//! rules file):
//! - `distinct-citizens`: an officer's distinct people in one hour through
//!   one app reach `min_citizens` and exceed `factor` × both that officer's
//!   and that app's usual hourly level over `baseline`.
//! - `repeated-denials`: `count` requests of one officer refused by policy
//!   (outside the jurisdiction, an ungranted purpose or role) within `within`.
//! - `off-hours`: granted requests outside working hours in Vietnam time
//!   (one alert per officer, app and day).
//! - `watch-list`: any access to a citizen on the auditors' watch list.
//! - `case-spread`: one case reference used for `citizens` or more
//!   distinct citizens within `within`.
//! - `chain-fork`, `policy-signature`, `verify-failure`: the log or the
//!   policy store is not what it should be.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use time::{OffsetDateTime, Weekday};

use crate::clock::VIETNAM;
use crate::metrics::Metrics;
use crate::warehouse::alerts::{Alert, NewAlert, RuleEvent, RuleTx, MAX_EVIDENCE};
use crate::warehouse::{Result, Warehouse};

pub const DISTINCT_CITIZENS: &str = "distinct-citizens";
pub const REPEATED_DENIALS: &str = "repeated-denials";
pub const OFF_HOURS: &str = "off-hours";
pub const WATCH_LIST: &str = "watch-list";
pub const CASE_SPREAD: &str = "case-spread";
pub const CHAIN_FORK: &str = "chain-fork";
pub const POLICY_SIGNATURE: &str = "policy-signature";
pub const VERIFY_FAILURE: &str = "verify-failure";

/// Every rule name.
pub const RULES: &[&str] = &[
    DISTINCT_CITIZENS,
    REPEATED_DENIALS,
    OFF_HOURS,
    WATCH_LIST,
    CASE_SPREAD,
    CHAIN_FORK,
    POLICY_SIGNATURE,
    VERIFY_FAILURE,
];

/// The rules file (`alerts.toml`); every key has a documented default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// How often the rules read new events.
    #[serde(with = "crate::config::de::secs")]
    pub interval: Duration,
    pub distinct_citizens: DistinctCitizens,
    pub repeated_denials: RepeatedDenials,
    pub off_hours: OffHours,
    pub watch_list: Toggle,
    pub case_spread: CaseSpread,
    pub system: Toggle,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistinctCitizens {
    pub enabled: bool,
    pub min_citizens: i64,
    pub factor: f64,
    #[serde(with = "crate::config::de::secs")]
    pub baseline: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepeatedDenials {
    pub enabled: bool,
    pub count: usize,
    #[serde(with = "crate::config::de::secs")]
    pub within: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OffHours {
    pub enabled: bool,
    /// `HH:MM`, Vietnam time.
    pub start: String,
    pub end: String,
    /// Working days: `mon` … `sun`.
    pub days: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaseSpread {
    pub enabled: bool,
    pub citizens: i64,
    #[serde(with = "crate::config::de::secs")]
    pub within: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Toggle {
    pub enabled: bool,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            interval: Duration::from_secs(5),
            distinct_citizens: DistinctCitizens::default(),
            repeated_denials: RepeatedDenials::default(),
            off_hours: OffHours::default(),
            watch_list: Toggle::default(),
            case_spread: CaseSpread::default(),
            system: Toggle::default(),
        }
    }
}

impl Default for DistinctCitizens {
    fn default() -> DistinctCitizens {
        DistinctCitizens {
            enabled: true,
            min_citizens: 40,
            factor: 4.0,
            baseline: Duration::from_secs(7 * 86_400),
        }
    }
}

impl Default for RepeatedDenials {
    fn default() -> RepeatedDenials {
        RepeatedDenials {
            enabled: true,
            count: 5,
            within: Duration::from_secs(600),
        }
    }
}

impl Default for OffHours {
    fn default() -> OffHours {
        OffHours {
            enabled: true,
            start: "07:00".into(),
            end: "18:00".into(),
            days: ["mon", "tue", "wed", "thu", "fri"].map(String::from).to_vec(),
        }
    }
}

impl Default for CaseSpread {
    fn default() -> CaseSpread {
        CaseSpread {
            enabled: true,
            citizens: 10,
            within: Duration::from_secs(86_400),
        }
    }
}

impl Default for Toggle {
    fn default() -> Toggle {
        Toggle { enabled: true }
    }
}

/// Minutes after midnight of `HH:MM` (`24:00` is the day's end).
fn hh_mm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
}

fn weekday(s: &str) -> Option<Weekday> {
    Some(match s.to_ascii_lowercase().as_str() {
        "mon" => Weekday::Monday,
        "tue" => Weekday::Tuesday,
        "wed" => Weekday::Wednesday,
        "thu" => Weekday::Thursday,
        "fri" => Weekday::Friday,
        "sat" => Weekday::Saturday,
        "sun" => Weekday::Sunday,
        _ => return None,
    })
}

/// Working hours, parsed.
#[derive(Debug, Clone)]
struct WorkingHours {
    start: u16,
    end: u16,
    days: Vec<Weekday>,
}

impl WorkingHours {
    fn contains(&self, t: OffsetDateTime) -> bool {
        let local = t.to_offset(VIETNAM);
        let minute = u16::from(local.hour()) * 60 + u16::from(local.minute());
        self.days.contains(&local.weekday()) && minute >= self.start && minute < self.end
    }
}

impl Rules {
    /// Reads a rules file; `FILE: message` naming the key on error.
    pub fn load(path: &Path) -> anyhow::Result<Rules> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let rules: Rules =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        rules
            .working_hours()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(rules)
    }

    fn working_hours(&self) -> std::result::Result<WorkingHours, String> {
        let o = &self.off_hours;
        let start = hh_mm(&o.start).ok_or("off_hours.start must be HH:MM, such as \"07:00\"")?;
        let end = hh_mm(&o.end).ok_or("off_hours.end must be HH:MM, such as \"18:00\"")?;
        let days = o
            .days
            .iter()
            .map(|d| {
                weekday(d).ok_or(format!(
                    "off_hours.days: '{d}' is not one of mon, tue, wed, thu, fri, sat, sun"
                ))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(WorkingHours { start, end, days })
    }
}

/// Where new alerts are POSTed (JSON, mutual TLS): the province's
/// security operations. An alert is sent until the webhook answers 2xx;
/// those of the last day that were not are sent on the next tick.
pub struct Webhook {
    pub url: http::Uri,
    pub client: crate::tls::https_client::HttpsClient,
    /// Names the sender in the payload.
    pub instance_id: String,
}

impl Webhook {
    /// A client presenting `cert`/`key` and trusting `ca`.
    pub fn new(
        url: http::Uri,
        ca: &Path,
        cert: &Path,
        key: &Path,
        instance_id: String,
    ) -> anyhow::Result<Webhook> {
        let tls = crate::tls::mutual_client_config(ca, cert, key, &[]).context("the alert webhook's TLS")?;
        let options = crate::tls::https_client::ClientOptions {
            connect_timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        Ok(Webhook {
            url,
            client: crate::tls::https_client::https_client(tls, &options),
            instance_id,
        })
    }

    async fn post(&self, alert: &Alert) -> std::result::Result<(), String> {
        let body =
            serde_json::json!({ "source": "popgate", "instance_id": self.instance_id, "alert": alert });
        let req = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| "no answer within 10 s".to_owned())?
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", resp.status()))
        }
    }
}

/// The rules, run tick by tick.
pub struct Engine {
    pub rules: Rules,
    hours: WorkingHours,
    pub warehouse: Warehouse,
    pub metrics: Arc<Metrics>,
    pub webhook: Option<Webhook>,
    /// What the distinct-citizens rule keeps between ticks (see [`Seen`]).
    seen: Mutex<Seen>,
}

/// What the distinct-citizens and case-spread rules keep between ticks, so
/// that a tick reads only its new events rather than the whole hour, week
/// or day again. Counting an event twice changes nothing (people and
/// requests are sets), so what is read from the warehouse may overlap what
/// is counted from the events judged.
#[derive(Default)]
struct Seen {
    /// The rules' watermarks as this engine's last tick left them.
    marks: Vec<(String, u64)>,
    /// Per officer, app and hour of the hours in `loaded`: the people and
    /// (up to [`MAX_EVIDENCE`]) the requests. An hour is read from the
    /// warehouse once, for every officer at once, and then kept up to date
    /// from the events the rules read.
    hours: HashMap<(String, String, OffsetDateTime), People>,
    loaded: std::collections::BTreeSet<OffsetDateTime>,
    /// The usual levels, by app and hour: the week before an hour does not
    /// change while that hour lasts, so each is read once an hour.
    baselines: HashMap<(String, OffsetDateTime), Baseline>,
    /// Per app and case reference: the citizens asked about within the
    /// case-spread window, kept up to date like `hours`.
    cases: HashMap<(String, String), Spread>,
}

impl Seen {
    /// Hours that ended more than an hour before `hour` are not judged again.
    fn forget_before(&mut self, hour: OffsetDateTime) {
        let recent = |h: &OffsetDateTime| *h + time::Duration::HOUR * 2 > hour;
        self.hours.retain(|(_, _, h), _| recent(h));
        self.loaded.retain(recent);
        self.baselines.retain(|(_, h), _| recent(h));
    }

    /// Counts a granted request of `officer` through `app` into what is
    /// kept of its hour and of its case.
    fn count(&mut self, officer: &str, app: &str, e: &RuleEvent) {
        let hour = hour_of(e.ts);
        if self.loaded.contains(&hour) {
            self.hours
                .entry((officer.to_owned(), app.to_owned(), hour))
                .or_default()
                .add(e);
        }
        if let (Some(case), Some(citizen)) = (&e.case_ref, &e.citizen_key) {
            if let Some(spread) = self.cases.get_mut(&(app.to_owned(), case.clone())) {
                spread.add(citizen, e.ts, e.audit_id);
            }
        }
    }

    /// Forgets every count: they are read from the warehouse again.
    fn clear_counts(&mut self) {
        self.hours.clear();
        self.loaded.clear();
        self.cases.clear();
    }
}

/// An app's usual levels before an hour: each officer's and the app's.
struct Baseline {
    officers: HashMap<String, f64>,
    app: f64,
}

/// The citizens asked about under one case reference, each with its
/// latest request, so that the window's start can pass them by.
#[derive(Default)]
struct Spread {
    latest: HashMap<String, OffsetDateTime>,
    /// `latest`, in time order.
    order: std::collections::BTreeSet<(OffsetDateTime, String)>,
    /// The first requests within the window (at most [`MAX_EVIDENCE`]).
    requests: std::collections::VecDeque<(OffsetDateTime, uuid::Uuid)>,
}

impl Spread {
    fn add(&mut self, citizen: &str, ts: OffsetDateTime, id: uuid::Uuid) {
        self.see(citizen, ts);
        self.add_request(ts, id);
    }

    /// Notes a request about `citizen` at `ts`.
    fn see(&mut self, citizen: &str, ts: OffsetDateTime) {
        match self.latest.get_mut(citizen) {
            Some(t) if *t >= ts => {}
            Some(t) => {
                self.order.remove(&(*t, citizen.to_owned()));
                *t = ts;
                self.order.insert((ts, citizen.to_owned()));
            }
            None => {
                self.latest.insert(citizen.to_owned(), ts);
                self.order.insert((ts, citizen.to_owned()));
            }
        }
    }

    fn add_request(&mut self, ts: OffsetDateTime, id: uuid::Uuid) {
        if self.requests.len() < MAX_EVIDENCE as usize && !self.requests.iter().any(|r| r.1 == id) {
            self.requests.push_back((ts, id));
        }
    }

    /// Lets the window start at `start`: how many citizens are within it,
    /// and the requests that name them.
    fn since(&mut self, start: OffsetDateTime) -> (i64, Vec<uuid::Uuid>) {
        while let Some((t, _)) = self.order.first() {
            if *t >= start {
                break;
            }
            if let Some((_, citizen)) = self.order.pop_first() {
                self.latest.remove(&citizen);
            }
        }
        while self.requests.front().is_some_and(|r| r.0 < start) {
            self.requests.pop_front();
        }
        (
            self.latest.len() as i64,
            self.requests.iter().map(|r| r.1).collect(),
        )
    }

    fn newest(&self) -> Option<OffsetDateTime> {
        self.order.last().map(|(t, _)| *t)
    }
}

#[derive(Default)]
struct People {
    keys: std::collections::HashSet<String>,
    ids: Vec<uuid::Uuid>,
}

impl People {
    fn add(&mut self, e: &RuleEvent) {
        if e.subject_keys.is_empty() {
            self.keys.extend(e.citizen_key.iter().cloned());
        } else {
            self.keys.extend(e.subject_keys.iter().cloned());
        }
        self.add_request(e.audit_id);
    }

    fn add_request(&mut self, id: uuid::Uuid) {
        if self.ids.len() < MAX_EVIDENCE as usize && !self.ids.contains(&id) {
            self.ids.push(id);
        }
    }
}

/// The alerts one tick found, one per dedup key, stored once at the end
/// of the tick: an officer over the distinct-citizens level is found again
/// by every batch of the tick, and storing each finding would rewrite the
/// alert's evidence as often. A key found again keeps the later summary and
/// the evidence of both, the first [`MAX_EVIDENCE`] audit ids, as storing
/// them one after the other would.
#[derive(Default)]
struct TickAlerts {
    alerts: Vec<NewAlert>,
    at: HashMap<String, (usize, std::collections::HashSet<uuid::Uuid>)>,
}

impl TickAlerts {
    fn add(&mut self, a: NewAlert) {
        match self.at.get_mut(&a.dedup_key) {
            Some((i, ids)) => {
                let kept = &mut self.alerts[*i];
                for id in a.audit_ids {
                    if kept.audit_ids.len() >= MAX_EVIDENCE as usize {
                        break;
                    }
                    if ids.insert(id) {
                        kept.audit_ids.push(id);
                    }
                }
                kept.summary = a.summary;
            }
            None => {
                let ids = a.audit_ids.iter().copied().collect();
                self.at.insert(a.dedup_key.clone(), (self.alerts.len(), ids));
                self.alerts.push(a);
            }
        }
    }
}

/// Events another instance's engine judged that this one counts itself
/// rather than read its hours and cases again.
const CATCH_UP: u64 = 10 * BATCH as u64;

/// Places of an instance's chain read per query (the events among them).
const BATCH: i64 = 2000;

fn hour_of(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_minute(0)
        .and_then(|t| t.replace_second(0))
        .and_then(|t| t.replace_nanosecond(0))
        .unwrap_or(t)
}

fn is_app_request(e: &RuleEvent) -> bool {
    e.kind == "outcome" && matches!(e.operation.as_deref(), Some("lookup" | "verify" | "household"))
}

fn granted(e: &RuleEvent) -> bool {
    is_app_request(e) && e.decision == "granted"
}

fn std_to_time(d: Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

impl Engine {
    pub fn new(rules: Rules, warehouse: Warehouse, metrics: Arc<Metrics>) -> anyhow::Result<Engine> {
        let hours = rules.working_hours().map_err(|e| anyhow::anyhow!(e))?;
        Ok(Engine {
            rules,
            hours,
            warehouse,
            metrics,
            webhook: None,
            seen: Mutex::default(),
        })
    }

    /// The usual levels before `hour` of `officer` and of every officer of
    /// `app`, read once per app and hour (see [`Seen::baselines`]).
    async fn baseline(
        &self,
        rt: &RuleTx<'_>,
        officer: &str,
        app: &str,
        hour: OffsetDateTime,
    ) -> Result<(f64, f64)> {
        let key = (app.to_owned(), hour);
        let of = |b: &Baseline| (b.officers.get(officer).copied().unwrap_or(0.0), b.app);
        if let Some(b) = self.seen().baselines.get(&key) {
            return Ok(of(b));
        }
        let since = hour - std_to_time(self.rules.distinct_citizens.baseline);
        let (officers, app_mean) = rt.hourly_means(app, since, hour).await?;
        let baseline = Baseline {
            officers,
            app: app_mean,
        };
        let levels = of(&baseline);
        let mut seen = self.seen();
        seen.forget_before(hour);
        seen.baselines.insert(key, baseline);
        Ok(levels)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The distinct people of `officer` through `app` in `hour` and the
    /// requests that carried them: the hour is read from the warehouse for
    /// every officer once (the first time, or after another engine judged
    /// too much to count here), then counted in memory.
    async fn people(
        &self,
        rt: &RuleTx<'_>,
        officer: &str,
        app: &str,
        hour: OffsetDateTime,
    ) -> Result<(i64, Vec<uuid::Uuid>)> {
        let loaded = self.seen().loaded.contains(&hour);
        if !loaded {
            let rows = rt.people_between(hour, hour + time::Duration::HOUR).await?;
            let mut seen = self.seen();
            seen.forget_before(hour);
            seen.loaded.insert(hour);
            for (officer, app, key, id) in rows {
                let people = seen.hours.entry((officer, app, hour)).or_default();
                people.keys.insert(key);
                people.add_request(id);
            }
        }
        let key = (officer.to_owned(), app.to_owned(), hour);
        Ok(self
            .seen()
            .hours
            .get(&key)
            .map_or((0, Vec::new()), |p| (p.keys.len() as i64, p.ids.clone())))
    }

    /// Counts the events another instance's engine judged since this
    /// engine's last tick (from `mine` to `marks`), as if it had judged
    /// them; when they are more than [`CATCH_UP`], or an instance is new to
    /// this engine, the counts are read from the warehouse again instead.
    async fn catch_up(&self, rt: &RuleTx<'_>, mine: &[(String, u64)], marks: &[(String, u64)]) -> Result<()> {
        let mut gaps = Vec::new();
        for (instance, theirs) in marks {
            match mine.iter().find(|(i, _)| i == instance) {
                Some((_, ours)) if ours <= theirs => gaps.push((instance, *ours, *theirs)),
                _ => {
                    self.seen().clear_counts();
                    return Ok(());
                }
            }
        }
        if gaps.iter().map(|(_, ours, theirs)| theirs - ours).sum::<u64>() > CATCH_UP {
            self.seen().clear_counts();
            return Ok(());
        }
        for (instance, mut after, until) in gaps {
            while after < until {
                let events = rt.events_after(instance, after, BATCH).await?;
                let Some(last) = events.last() else { break };
                after = last.seq;
                let mut seen = self.seen();
                for e in events.iter().filter(|e| e.seq <= until && granted(e)) {
                    if let (Some(officer), Some(app)) = (&e.officer_id, &e.app_id) {
                        seen.count(officer, app, e);
                    }
                }
            }
        }
        Ok(())
    }

    /// The distinct citizens asked about under `case` of `app` from `start`
    /// to `newest` and the first requests about them: counted in memory once
    /// read from the warehouse, as [`Engine::people`] does.
    async fn spread(
        &self,
        rt: &RuleTx<'_>,
        app: &str,
        case: &str,
        start: OffsetDateTime,
        newest: OffsetDateTime,
    ) -> Result<(i64, Vec<uuid::Uuid>)> {
        let key = (app.to_owned(), case.to_owned());
        if let Some(spread) = self.seen().cases.get_mut(&key) {
            return Ok(spread.since(start));
        }
        let (citizens, requests) = rt.case_citizens(app, case, start, newest).await?;
        let mut spread = Spread::default();
        for (citizen, ts) in citizens {
            spread.see(&citizen, ts);
        }
        for (ts, id) in requests {
            spread.add_request(ts, id);
        }
        let counted = spread.since(start);
        self.seen().cases.insert(key, spread);
        Ok(counted)
    }

    /// Stores an alert raised outside a tick (a refused policy signature, a
    /// failed verify), counts it and sends it on when it is new.
    pub async fn raise(self: &Arc<Self>, a: NewAlert) -> Result<Alert> {
        let (alert, new) = self.warehouse.raise_alert(&a).await?;
        if new {
            self.announce(a.rule, &alert);
            // Sent on in the background: a slow webhook never holds up the
            // request that raised the alert.
            let engine = self.clone();
            tokio::spawn(async move {
                if let Err(error) = engine.send_unsent().await {
                    tracing::warn!(%error, "cannot read the alerts to send on");
                }
            });
        }
        Ok(alert)
    }

    fn announce(&self, rule: &'static str, alert: &Alert) {
        self.metrics.observe_alert(rule);
        tracing::warn!(rule, alert = %alert.id, officer = alert.officer_id.as_deref().unwrap_or("-"), app = alert.app_id.as_deref().unwrap_or("-"), "alert raised");
    }

    /// One pass: every instance's new events, until each is caught up.
    /// Returns how many events were read (0 when another instance holds
    /// the lock).
    pub async fn tick(&self) -> Result<usize> {
        let mut client = self.warehouse.client().await?;
        let Some(rt) = RuleTx::begin(&mut client).await? else {
            return Ok(0);
        };
        let mut raised: Vec<(&'static str, Alert)> = Vec::new();
        let mut read = 0;
        if self.rules.system.enabled {
            for (instance, seq) in rt.forks().await? {
                let a = NewAlert {
                    rule: CHAIN_FORK,
                    dedup_key: format!("{CHAIN_FORK}:{instance}:{seq}"),
                    officer_id: None,
                    app_id: None,
                    instance_id: Some(instance.clone()),
                    summary: format!("the warehouse holds another event at seq {seq} of {instance}'s chain than its journal (a fork); that instance's shipper has stopped"),
                    audit_ids: Vec::new(),
                };
                let (alert, new) = rt.raise(&a).await?;
                if new {
                    raised.push((CHAIN_FORK, alert));
                }
            }
        }
        let watched = if self.rules.watch_list.enabled {
            rt.watched().await?
        } else {
            Default::default()
        };
        let marks = rt.watermarks().await?;
        let behind = {
            let seen = self.seen();
            (seen.marks != marks).then(|| seen.marks.clone())
        };
        if let Some(mine) = behind {
            self.catch_up(&rt, &mine, &marks).await?;
        }
        let mut left = Vec::with_capacity(marks.len());
        let mut found = TickAlerts::default();
        for (instance, mark) in marks {
            let mut after = mark;
            loop {
                let events = rt.events_after(&instance, after, BATCH).await?;
                let Some(last) = events.last() else { break };
                after = last.seq;
                read += events.len();
                for a in self.judge(&rt, &instance, &events, &watched).await? {
                    found.add(a);
                }
                // A batch short of BATCH may end at a gap rather than at
                // the head: only an empty one ends the instance's pass.
            }
            if after != mark {
                rt.set_watermark(&instance, after).await?;
            }
            left.push((instance, after));
        }
        for a in found.alerts {
            let (alert, new) = rt.raise(&a).await?;
            if new {
                raised.push((a.rule, alert));
            }
        }
        let committed = rt.commit().await;
        {
            let mut seen = self.seen();
            match committed {
                Ok(()) => seen.marks = left,
                // Counted, but not judged: read again next time.
                Err(_) => *seen = Seen::default(),
            }
        }
        committed?;
        for (rule, alert) in &raised {
            self.announce(rule, alert);
        }
        self.send_unsent().await?;
        Ok(read)
    }

    /// Sends the alerts the webhook has not taken yet; stops at the first
    /// failure (the next tick tries again).
    pub async fn send_unsent(&self) -> Result<()> {
        let Some(hook) = &self.webhook else { return Ok(()) };
        for alert in self.warehouse.unsent_alerts(100).await? {
            match hook.post(&alert).await {
                Ok(()) => self.warehouse.mark_alert_sent(&alert.id).await?,
                Err(why) => {
                    self.metrics.observe_webhook_failure();
                    tracing::warn!(alert = %alert.id, %why, "the alert webhook did not take an alert; retrying on the next tick");
                    break;
                }
            }
        }
        Ok(())
    }

    /// The alerts one batch of an instance's events gives.
    async fn judge(
        &self,
        rt: &RuleTx<'_>,
        instance: &str,
        events: &[RuleEvent],
        watched: &std::collections::HashSet<String>,
    ) -> Result<Vec<NewAlert>> {
        let r = &self.rules;
        let mut out = Vec::new();
        // Who and what this batch touched.
        let mut hours: BTreeMap<(String, String, OffsetDateTime), ()> = BTreeMap::new();
        let mut denials: BTreeMap<(String, String), OffsetDateTime> = BTreeMap::new();
        let mut late: BTreeMap<(String, String, time::Date), Vec<uuid::Uuid>> = BTreeMap::new();
        let mut cases: BTreeMap<(String, String), OffsetDateTime> = BTreeMap::new();
        // The counts kept in memory are updated under one lock, released
        // before the warehouse is asked anything.
        {
            let mut seen = self.seen();
            for e in events {
                let (Some(officer), Some(app)) = (e.officer_id.clone(), e.app_id.clone()) else {
                    continue;
                };
                if is_app_request(e) && e.decision == "denied" && e.http_status == Some(403) {
                    let newest = denials.entry((officer.clone(), app.clone())).or_insert(e.ts);
                    *newest = (*newest).max(e.ts);
                }
                if !granted(e) {
                    continue;
                }
                seen.count(&officer, &app, e);
                hours.insert((officer.clone(), app.clone(), hour_of(e.ts)), ());
                if r.off_hours.enabled && !self.hours.contains(e.ts) {
                    late.entry((officer.clone(), app.clone(), e.ts.to_offset(VIETNAM).date()))
                        .or_default()
                        .push(e.audit_id);
                }
                if let Some(case) = &e.case_ref {
                    let newest = cases.entry((app.clone(), case.clone())).or_insert(e.ts);
                    *newest = (*newest).max(e.ts);
                }
                if r.watch_list.enabled
                    && e.subject_keys
                        .iter()
                        .chain(e.citizen_key.iter())
                        .any(|k| watched.contains(k))
                {
                    out.push(NewAlert {
                        rule: WATCH_LIST,
                        dedup_key: format!("{WATCH_LIST}:{}", e.audit_id),
                        officer_id: Some(officer.clone()),
                        app_id: Some(app.clone()),
                        instance_id: Some(instance.to_owned()),
                        summary: format!("officer {officer} of {app} accessed a citizen on the watch list"),
                        audit_ids: vec![e.audit_id],
                    });
                }
            }
        }
        if r.distinct_citizens.enabled {
            let d = &r.distinct_citizens;
            for (officer, app, hour) in hours.into_keys() {
                let (n, ids) = self.people(rt, &officer, &app, hour).await?;
                if n < d.min_citizens {
                    continue;
                }
                let (own, app_mean) = self.baseline(rt, &officer, &app, hour).await?;
                let usual = own.max(app_mean);
                if (n as f64) <= d.factor * usual {
                    continue;
                }
                let label = hour
                    .to_offset(VIETNAM)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                out.push(NewAlert {
                    rule: DISTINCT_CITIZENS,
                    dedup_key: format!("{DISTINCT_CITIZENS}:{app}:{officer}:{}", hour.unix_timestamp()),
                    officer_id: Some(officer.clone()),
                    app_id: Some(app.clone()),
                    instance_id: None,
                    summary: format!(
                        "officer {officer} of {app} reached {n} distinct people in the hour from {label}; the usual level is {own:.1} for this officer and {app_mean:.1} for this app"
                    ),
                    audit_ids: ids,
                });
            }
        }
        if r.repeated_denials.enabled {
            let d = &r.repeated_denials;
            let within = std_to_time(d.within);
            for ((officer, app), newest) in denials {
                let ids = rt.denials(&officer, &app, newest - within, newest).await?;
                if ids.len() < d.count {
                    continue;
                }
                let bucket = newest.unix_timestamp() / within.whole_seconds().max(1);
                out.push(NewAlert {
                    rule: REPEATED_DENIALS,
                    dedup_key: format!("{REPEATED_DENIALS}:{app}:{officer}:{bucket}"),
                    officer_id: Some(officer.clone()),
                    app_id: Some(app.clone()),
                    instance_id: None,
                    summary: format!(
                        "officer {officer} of {app} was refused by policy {} times within {} (outside the jurisdiction, or a purpose or role not granted)",
                        ids.len(),
                        crate::config::de::format_duration(d.within)
                    ),
                    audit_ids: ids,
                });
            }
        }
        for ((officer, app, day), ids) in late {
            out.push(NewAlert {
                rule: OFF_HOURS,
                dedup_key: format!("{OFF_HOURS}:{app}:{officer}:{day}"),
                officer_id: Some(officer.clone()),
                app_id: Some(app.clone()),
                instance_id: Some(instance.to_owned()),
                summary: format!(
                    "officer {officer} of {app} accessed citizen data outside working hours ({}–{} Vietnam time) on {day}",
                    r.off_hours.start, r.off_hours.end
                ),
                audit_ids: ids,
            });
        }
        if r.case_spread.enabled {
            let c = &r.case_spread;
            let within = std_to_time(c.within);
            if let Some(latest) = cases.values().max() {
                self.seen()
                    .cases
                    .retain(|_, s| s.newest().is_some_and(|t| t + within >= *latest));
            }
            for ((app, case), newest) in cases {
                let (n, ids) = self.spread(rt, &app, &case, newest - within, newest).await?;
                if n < c.citizens {
                    continue;
                }
                let day = newest.to_offset(VIETNAM).date();
                out.push(NewAlert {
                    rule: CASE_SPREAD,
                    dedup_key: format!("{CASE_SPREAD}:{app}:{case}:{day}"),
                    officer_id: None,
                    app_id: Some(app.clone()),
                    instance_id: None,
                    summary: format!(
                        "the case reference {case} of {app} served requests about {n} distinct citizens within {}",
                        crate::config::de::format_duration(c.within)
                    ),
                    audit_ids: ids,
                });
            }
        }
        Ok(out)
    }

    /// Runs ticks until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.rules.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            // A tick gives way to shutdown: its transaction is rolled back
            // and the next start judges the same events again.
            tokio::select! {
                ticked = self.tick() => match ticked {
                    Ok(_) => {
                        if failing {
                            tracing::info!("alert rules run again");
                        }
                        failing = false;
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "alert rules cannot read the warehouse; retrying");
                        }
                        failing = true;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_rules_file_states_the_defaults() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts.toml");
        let shipped = Rules::load(&file).expect("alerts.toml");
        assert_eq!(format!("{shipped:?}"), format!("{:?}", Rules::default()));
    }

    #[test]
    fn a_bad_rules_file_names_the_key() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("alerts.toml");
        std::fs::write(&file, "[off_hours]\nstart = \"7h\"\n").expect("write");
        let e = Rules::load(&file).expect_err("bad start").to_string();
        assert!(e.contains("off_hours.start"), "{e}");
        std::fs::write(&file, "[repeated_denials]\ncuont = 3\n").expect("write");
        let e = Rules::load(&file).expect_err("unknown key").to_string();
        assert!(e.contains("cuont"), "{e}");
    }

    #[test]
    fn working_hours_are_vietnam_time() {
        let rules = Rules::default();
        let hours = rules.working_hours().expect("hours");
        // 19:31Z on a Tuesday is 02:31 on Wednesday in Vietnam.
        let night = time::macros::datetime!(2026-12-01 19:31 UTC);
        assert!(!hours.contains(night));
        let morning = time::macros::datetime!(2026-12-02 02:00 UTC);
        assert!(hours.contains(morning), "09:00 on a Wednesday");
        let saturday = time::macros::datetime!(2026-12-05 02:00 UTC);
        assert!(!hours.contains(saturday));
    }

    #[test]
    fn a_tick_stores_each_alert_once_with_the_evidence_of_every_finding() {
        let finding = |key: &str, summary: &str, ids: std::ops::Range<u128>| NewAlert {
            rule: DISTINCT_CITIZENS,
            dedup_key: key.to_owned(),
            officer_id: Some("canbo-1".into()),
            app_id: Some("mot-cua".into()),
            instance_id: None,
            summary: summary.to_owned(),
            audit_ids: ids.map(uuid::Uuid::from_u128).collect(),
        };
        let mut found = TickAlerts::default();
        found.add(finding("a", "41 people", 0..3));
        found.add(finding("b", "other", 10..11));
        found.add(finding("a", "45 people", 2..5));
        assert_eq!(found.alerts.len(), 2, "one per key, in the order first found");
        let a = &found.alerts[0];
        assert_eq!(a.summary, "45 people", "the later summary");
        assert_eq!(
            a.audit_ids,
            (0..5).map(uuid::Uuid::from_u128).collect::<Vec<_>>(),
            "the evidence of both, once each"
        );
        assert_eq!(found.alerts[1].dedup_key, "b");
        // Past the evidence bound, the first ids stay, as the store keeps them.
        found.add(finding("a", "900 people", 5..900));
        assert_eq!(found.alerts[0].audit_ids.len(), MAX_EVIDENCE as usize);
        assert_eq!(found.alerts[0].audit_ids[0], uuid::Uuid::from_u128(0));
    }
}
