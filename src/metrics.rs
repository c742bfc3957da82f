//! Prometheus metrics of the gateway, rendered as text on the ops listener's
//! `/metrics`. Labels are app ids, operations and statuses only — never
//! citizen data.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    total: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.total += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.total);
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braced} {}", self.total);
    }
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    upstream: Histogram,
    journal_wait: BTreeMap<&'static str, Histogram>,
    alerts: BTreeMap<&'static str, u64>,
    webhook_failures: u64,
}

/// The audit events a request waits for before it goes on.
#[derive(Debug, Clone, Copy)]
pub enum AuditWait {
    /// The intent, before the national database is asked.
    Intent,
    /// The outcome, before the answer is released.
    Outcome,
}

impl AuditWait {
    fn label(self) -> &'static str {
        match self {
            AuditWait::Intent => "intent",
            AuditWait::Outcome => "outcome",
        }
    }
}

/// The gateway's counters and histograms.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Point-in-time values added when rendering.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub policy_version: u64,
    pub journal_durable_seq: u64,
    pub journal_delivered_seq: u64,
    pub journal_backlog: u64,
    pub shipper_lag_seconds: u64,
    pub journal_degraded: bool,
    pub chain_fork: bool,
    pub policy_refusals: u64,
    pub unresolved_addresses: u64,
    pub upstream_circuit_open: bool,
    pub limiter_keys: usize,
    pub token_cache_entries: usize,
    /// 1 while the rate limits are enforced in Redis for every instance.
    pub limits_shared: bool,
    /// Checks answered by this instance's share because Redis could not.
    pub limits_fallbacks: u64,
    /// Instances sharing the limits (their heartbeats).
    pub live_instances: u32,
}

/// Only ids that are safe as label values pass; anything else is "other".
fn label(value: &str) -> &str {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        value
    } else {
        "other"
    }
}

impl Metrics {
    pub fn observe_request(&self, app: &str, operation: &str, status: u16, elapsed: Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *m.requests
            .entry((label(app).to_owned(), label(operation).to_owned(), status))
            .or_default() += 1;
        m.latency
            .entry(label(operation).to_owned())
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_upstream(&self, elapsed: Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.upstream.observe(elapsed.as_secs_f64());
    }

    /// Time a request waited for its audit event to be durable.
    pub fn observe_journal_wait(&self, event: AuditWait, elapsed: Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.journal_wait
            .entry(event.label())
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition.
    /// An alert this instance stored, by its rule (a fixed name).
    pub fn observe_alert(&self, rule: &'static str) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *m.alerts.entry(rule).or_default() += 1;
    }

    /// The alert webhook did not take an alert.
    pub fn observe_webhook_failure(&self) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        m.webhook_failures += 1;
    }

    pub fn render(&self, g: &Gauges) -> String {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP popgate_alerts_total Alerts this instance raised, by rule.\n");
        out.push_str("# TYPE popgate_alerts_total counter\n");
        for (rule, n) in &m.alerts {
            let _ = writeln!(out, "popgate_alerts_total{{rule=\"{rule}\"}} {n}");
        }
        out.push_str(
            "# HELP popgate_alert_webhook_failures_total Alerts the webhook did not take (retried).\n",
        );
        out.push_str("# TYPE popgate_alert_webhook_failures_total counter\n");
        let _ = writeln!(out, "popgate_alert_webhook_failures_total {}", m.webhook_failures);
        out.push_str(
            "# HELP popgate_requests_total Requests on the app listener by app, operation and status.\n",
        );
        out.push_str("# TYPE popgate_requests_total counter\n");
        for ((app, op, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "popgate_requests_total{{app=\"{app}\",operation=\"{op}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP popgate_request_duration_seconds Time to answer, by operation.\n");
        out.push_str("# TYPE popgate_request_duration_seconds histogram\n");
        for (op, h) in &m.latency {
            h.render(
                &mut out,
                "popgate_request_duration_seconds",
                &format!("operation=\"{op}\""),
            );
        }
        out.push_str("# HELP popgate_upstream_duration_seconds Time the national database took to answer.\n");
        out.push_str("# TYPE popgate_upstream_duration_seconds histogram\n");
        m.upstream
            .render(&mut out, "popgate_upstream_duration_seconds", "");
        out.push_str(
            "# HELP popgate_journal_wait_seconds Time a request waited for its audit event to be durable \
             (intent: before the national database is asked; outcome: before the answer is released).\n",
        );
        out.push_str("# TYPE popgate_journal_wait_seconds histogram\n");
        for (event, h) in &m.journal_wait {
            h.render(
                &mut out,
                "popgate_journal_wait_seconds",
                &format!("event=\"{event}\""),
            );
        }
        let gauges: [(&str, &str, f64); 14] = [
            (
                "popgate_policy_version",
                "The active policy version.",
                g.policy_version as f64,
            ),
            (
                "popgate_journal_durable_seq",
                "Last audit event durable in the local journal.",
                g.journal_durable_seq as f64,
            ),
            (
                "popgate_journal_delivered_seq",
                "Last audit event delivered to the warehouse.",
                g.journal_delivered_seq as f64,
            ),
            (
                "popgate_journal_backlog",
                "Audit events awaiting delivery to the warehouse.",
                g.journal_backlog as f64,
            ),
            (
                "popgate_shipper_lag_seconds",
                "Seconds the warehouse has made no progress on the backlog.",
                g.shipper_lag_seconds as f64,
            ),
            (
                "popgate_journal_degraded",
                "1 while the audit journal cannot be written.",
                f64::from(u8::from(g.journal_degraded)),
            ),
            (
                "popgate_policy_versions_refused",
                "Policy versions this instance refused to apply (unsigned, untrusted or altered).",
                g.policy_refusals as f64,
            ),
            (
                "popgate_unresolved_addresses",
                "Addresses from the national database that resolved to no 2025 unit since start (treated as outside every jurisdiction).",
                g.unresolved_addresses as f64,
            ),
            (
                "popgate_audit_chain_fork",
                "1 when the warehouse holds another chain under this instance's id: shipping has stopped.",
                f64::from(u8::from(g.chain_fork)),
            ),
            (
                "popgate_upstream_circuit_open",
                "1 while calls to the national database are suspended.",
                f64::from(u8::from(g.upstream_circuit_open)),
            ),
            (
                "popgate_limiter_keys",
                "Keys held by the rate limiters.",
                g.limiter_keys as f64,
            ),
            (
                "popgate_token_cache_entries",
                "Verified officer tokens cached.",
                g.token_cache_entries as f64,
            ),
            (
                "popgate_rate_limits_shared",
                "1 while the rate limits are enforced in Redis for every instance; 0 when this instance enforces its share.",
                f64::from(u8::from(g.limits_shared)),
            ),
            (
                "popgate_live_instances",
                "Instances that share the rate limits, by their heartbeats (each takes 1/N of every limit when Redis cannot answer).",
                f64::from(g.live_instances),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP popgate_rate_limit_fallbacks_total Limit checks this instance answered alone because Redis could not.\n# TYPE popgate_rate_limit_fallbacks_total counter\npopgate_rate_limit_fallbacks_total {}",
            g.limits_fallbacks
        );
        let _ = writeln!(
            out,
            "# HELP popgate_build_info The running build.\n# TYPE popgate_build_info gauge\npopgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        render_process(&mut out);
        out
    }
}

/// The `process_*` metrics every Prometheus client library exports, read
/// from `/proc/self` (Linux); what cannot be read is left out.
fn render_process(out: &mut String) {
    use std::fmt::Write;
    // /proc reports CPU times in USER_HZ, 100 per second on Linux.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of the line, 11 and 12 here.
    if let (Some(user), Some(system)) = (field(11), field(12)) {
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}",
            (user + system) / TICKS_PER_SECOND
        );
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines().find_map(|l| {
            l.strip_prefix("btime ")
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
    });
    if let (Some(boot), Some(start)) = (boot, field(19)) {
        let _ = writeln!(
            out,
            "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}",
            boot + start / TICKS_PER_SECOND
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    for (name, key, help) in [
        (
            "process_resident_memory_bytes",
            "VmRSS:",
            "Resident memory size in bytes.",
        ),
        (
            "process_virtual_memory_bytes",
            "VmSize:",
            "Virtual memory size in bytes.",
        ),
    ] {
        if let Some(kib) = kib(key) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                kib * 1024.0
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}",
            fds.count()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.observe_request("mot-cua", "lookup", 200, Duration::from_millis(3));
        m.observe_request("mot-cua", "lookup", 200, Duration::from_millis(30));
        m.observe_request("079203001234 Nguyễn", "lookup", 403, Duration::from_millis(1));
        m.observe_journal_wait(AuditWait::Intent, Duration::from_micros(700));
        m.observe_journal_wait(AuditWait::Outcome, Duration::from_millis(3));
        let text = m.render(&Gauges {
            journal_backlog: 7,
            ..Gauges::default()
        });
        assert!(
            text.contains("popgate_requests_total{app=\"mot-cua\",operation=\"lookup\",status=\"200\"} 2")
        );
        assert!(text.contains("popgate_requests_total{app=\"other\",operation=\"lookup\",status=\"403\"} 1"));
        assert!(text.contains("popgate_request_duration_seconds_bucket{operation=\"lookup\",le=\"0.005\"} 2"));
        assert!(text.contains("popgate_request_duration_seconds_count{operation=\"lookup\"} 3"));
        assert!(text.contains("popgate_journal_backlog 7"));
        assert!(text.contains("popgate_build_info{version=\""), "{text}");
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.parse::<f64>().ok());
            // CPU time may still be 0 this early; the others are positive.
            assert!(
                value.is_some_and(|v| v > 0.0 || name == "process_cpu_seconds_total"),
                "{name}: {value:?}"
            );
        }
        assert!(text.contains("popgate_journal_wait_seconds_bucket{event=\"intent\",le=\"0.0005\"} 0"));
        assert!(text.contains("popgate_journal_wait_seconds_bucket{event=\"intent\",le=\"0.001\"} 1"));
        assert!(text.contains("popgate_journal_wait_seconds_bucket{event=\"outcome\",le=\"0.001\"} 0"));
        assert!(text.contains("popgate_journal_wait_seconds_count{event=\"outcome\"} 1"));
        assert!(!text.contains("079203001234"));
    }
}
