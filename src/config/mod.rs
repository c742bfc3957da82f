//! The gateway's TOML configuration (`popgate serve --config FILE`): parsed
//! once into typed values, every default a named constant, relative paths
//! resolved against the config file's directory. A bad file is refused with
//! `FILE:LINE:COL: what is wrong`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

pub(crate) mod de;

pub use crate::server::{
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_CERTIFICATE,
    DEFAULT_MAX_HEADER_BYTES,
};

pub const DEFAULT_PROVINCE: u16 = 79;
pub const DEFAULT_GATEWAY_LISTEN: SocketAddr = SocketAddr::new(LOOPBACK, 8443);
pub const DEFAULT_OPS_LISTEN: SocketAddr = SocketAddr::new(LOOPBACK, 9090);
pub const DEFAULT_INSTANCE_ID: &str = "gw-1";
pub const DEFAULT_ADMIN_APP: &str = "admin-cli";
pub const DEFAULT_AUDIT_APP: &str = "audit-cli";
pub const DEFAULT_FREEZE_CONFIRM_WITHIN: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_UPSTREAM_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
pub const DEFAULT_SERVICE_CODE: &str = "POPGATE";
pub const DEFAULT_INTEGRATION_CODE: &str = "POPGATE-79";
pub const DEFAULT_CIRCUIT_FAILURES: u32 = 5;
pub const DEFAULT_CIRCUIT_OPEN: Duration = Duration::from_secs(10);
pub const DEFAULT_TOKEN_ALGORITHMS: [&str; 2] = ["ES256", "EdDSA"];
pub const DEFAULT_TOKEN_LEEWAY: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
pub const DEFAULT_JWKS_REFETCH: Duration = Duration::from_secs(30);
pub const DEFAULT_PER_APP_PER_MINUTE: u32 = 3_000;
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1_000;
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_MAX_BACKLOG_EVENTS: u64 = 5_000_000;
pub const DEFAULT_MAX_BACKLOG_AGE: Duration = Duration::from_secs(6 * 3600);
pub const DEFAULT_SHIP_BATCH: usize = 1_000;
pub const DEFAULT_JOURNAL_RETENTION: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(3_600);
pub const DEFAULT_SHIPPER_STUCK_AFTER: Duration = Duration::from_secs(30);
/// 90 days.
pub const DEFAULT_HOLD_WITHOUT_APPROVAL: Duration = Duration::from_secs(90 * 86_400);
pub const DEFAULT_PER_OFFICER_PER_MINUTE: u32 = 60;
pub const DEFAULT_UPSTREAM_PER_SECOND: u32 = 200;
pub const DEFAULT_DISTINCT_CITIZENS_PER_HOUR: u32 = 300;
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewaySection,
    pub tls: TlsSection,
    pub upstream: UpstreamSection,
    pub tokens: TokensSection,
    pub audit: AuditSection,
    #[serde(default)]
    pub rate_limits: RateLimitsSection,
    #[serde(default)]
    pub warehouse: WarehouseSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub alerts: AlertsSection,
    #[serde(default)]
    pub telemetry: TelemetrySection,
    /// The web console; none without this section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleSection>,
}

/// The web console of policy admins and auditors (docs/console.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    /// HTTPS, with the gateway's server certificate.
    #[serde(default = "default_console_listen")]
    pub listen: SocketAddr,
    /// Also require officials' personal certificates chaining to this CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// A session unused this long is over.
    #[serde(default = "default_console_idle", with = "de::secs")]
    pub idle_timeout: Duration,
    pub oidc: OidcSection,
}

/// The identity provider officials sign in at (OpenID Connect,
/// authorization code with PKCE).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    /// The provider's issuer URL; its discovery document is at
    /// `ISSUER/.well-known/openid-configuration`.
    #[serde(with = "de::https_uri")]
    pub issuer: Uri,
    pub client_id: String,
    /// A file holding the console's client secret (owner-only).
    pub client_secret_file: PathBuf,
    /// Where the provider sends officials back: `https://CONSOLE/auth/callback`.
    #[serde(with = "de::https_uri")]
    pub redirect_url: Uri,
    /// The CA of the provider's server certificate.
    pub ca: PathBuf,
}

/// The console's address unless configured.
pub const DEFAULT_CONSOLE_LISTEN: SocketAddr = SocketAddr::new(LOOPBACK, 8444);
/// The console's idle timeout unless configured.
pub const DEFAULT_CONSOLE_IDLE: Duration = Duration::from_secs(15 * 60);

fn default_console_listen() -> SocketAddr {
    DEFAULT_CONSOLE_LISTEN
}
fn default_console_idle() -> Duration {
    DEFAULT_CONSOLE_IDLE
}

/// Request traces (off unless an endpoint is set).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// An OTLP/HTTP collector's traces endpoint, such as
    /// `http://127.0.0.1:4318/v1/traces` (JSON encoding).
    #[serde(
        default,
        with = "de::optional_http_uri",
        skip_serializing_if = "Option::is_none"
    )]
    pub otlp_endpoint: Option<Uri>,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for TelemetrySection {
    fn default() -> TelemetrySection {
        TelemetrySection {
            otlp_endpoint: None,
            service_name: default_service_name(),
        }
    }
}

fn default_service_name() -> String {
    "popgate".to_owned()
}

/// The alert rules over the audit log (docs/audit.md, "Alerts").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// Whether this instance runs the rules (one instance of a deployment
    /// runs them at a time; the others wait). Alerts of this instance's own
    /// (a refused policy version, a failed verify) are raised either way.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The rules file (`alerts.toml`); without it, the documented defaults.
    #[serde(default)]
    pub rules: Option<PathBuf>,
    /// Each new alert is POSTed here (JSON) for the province's security
    /// operations, over mutual TLS.
    #[serde(
        default,
        with = "de::optional_https_uri",
        skip_serializing_if = "Option::is_none"
    )]
    pub webhook_url: Option<Uri>,
    /// The CA of the webhook's server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_ca: Option<PathBuf>,
    /// The client certificate and key presented to the webhook; default the
    /// province's certificate of `[upstream]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_key: Option<PathBuf>,
}

impl Default for AlertsSection {
    fn default() -> AlertsSection {
        AlertsSection {
            enabled: true,
            rules: None,
            webhook_url: None,
            webhook_ca: None,
            webhook_cert: None,
            webhook_key: None,
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Address of the mTLS listener for apps.
    #[serde(default = "default_gateway_listen")]
    pub listen: SocketAddr,
    /// Address of the plain-HTTP ops listener (health, readiness).
    #[serde(default = "default_ops_listen")]
    pub ops_listen: SocketAddr,
    /// Names this instance in audit records and logs.
    #[serde(default = "default_instance_id")]
    pub instance_id: String,
    /// Province code (post-2025) whose jurisdiction `province` grants mean.
    #[serde(default = "default_province", deserialize_with = "de::province")]
    pub province: u16,
    /// Directory with fields.toml, purposes.toml and apps/.
    pub policies: PathBuf,
    /// Directory for the embedded warehouse when `warehouse.url` is unset.
    pub data_dir: PathBuf,
    /// Apps through which policy admins work (`/admin/v1`).
    #[serde(default = "default_admin_apps")]
    pub admin_apps: Vec<String>,
    /// Apps through which auditors work (`/audit/v1`).
    #[serde(default = "default_audit_apps")]
    pub audit_apps: Vec<String>,
    /// How long an emergency freeze by one admin stays unless a second
    /// admin confirms it.
    #[serde(default = "default_freeze_confirm_within", with = "de::secs")]
    pub freeze_confirm_within: Duration,
}

fn default_freeze_confirm_within() -> Duration {
    DEFAULT_FREEZE_CONFIRM_WITHIN
}

fn default_admin_apps() -> Vec<String> {
    vec![DEFAULT_ADMIN_APP.to_owned()]
}
fn default_audit_apps() -> Vec<String> {
    vec![DEFAULT_AUDIT_APP.to_owned()]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA that issues the apps' client certificates.
    pub client_ca: PathBuf,
    /// Accept TLS 1.2 (ECDHE with AEAD suites only) besides TLS 1.3.
    #[serde(default)]
    pub allow_tls12: bool,
    /// Revocation lists (PEM) of the client CA; a stale one is refused.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Base URL of the national database's services (https only).
    #[serde(with = "de::https_uri")]
    pub url: Uri,
    /// CA of the national database's server certificate.
    pub ca: PathBuf,
    /// The province's client certificate and key for the national database.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A whole query (`"5s"`; the old `timeout_ms` in milliseconds).
    #[serde(
        default = "default_upstream_timeout",
        alias = "timeout_ms",
        with = "de::millis"
    )]
    pub timeout: Duration,
    #[serde(
        default = "default_upstream_connect_timeout",
        alias = "connect_timeout_ms",
        with = "de::millis"
    )]
    pub connect_timeout: Duration,
    #[serde(default = "default_upstream_max_response_bytes")]
    pub max_response_bytes: usize,
    /// `MaDVC` sent with every query.
    #[serde(default = "default_service_code")]
    pub service_code: String,
    /// `MaTichHop` sent with every query.
    #[serde(default = "default_integration_code")]
    pub integration_code: String,
    /// Consecutive failures that open the circuit (calls refused with 503).
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long the circuit stays open before one probe is let through.
    #[serde(
        default = "default_circuit_open",
        alias = "circuit_open_secs",
        with = "de::secs"
    )]
    pub circuit_open: Duration,
    /// Unset: one HTTP/2 connection when the national database offers h2
    /// (keep-alive HTTP/1.1 otherwise). A number: HTTP/1.1 over at most
    /// that many keep-alive connections, a query waiting for a free one.
    #[serde(default)]
    pub http1_connections: Option<std::num::NonZeroUsize>,
}

fn default_circuit_failures() -> u32 {
    DEFAULT_CIRCUIT_FAILURES
}
fn default_circuit_open() -> Duration {
    DEFAULT_CIRCUIT_OPEN
}

/// How officer tokens are verified.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensSection {
    /// The identity provider's JWK set, from a file ...
    pub jwks: Option<PathBuf>,
    /// ... or from an HTTPS URL, trusted through `jwks_ca`.
    #[serde(default, with = "de::optional_https_uri")]
    pub jwks_url: Option<Uri>,
    pub jwks_ca: Option<PathBuf>,
    pub issuer: String,
    pub audience: String,
    /// Accepted signing algorithms (asymmetric only).
    #[serde(default = "default_token_algorithms", deserialize_with = "de::algorithms")]
    pub algorithms: Vec<String>,
    /// Clock-skew allowance for exp/nbf/iat, at most 30 s.
    #[serde(default = "default_token_leeway", alias = "leeway_secs", with = "de::leeway")]
    pub leeway: Duration,
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// An unknown `kid` reloads the key set at most this often.
    #[serde(
        default = "default_jwks_refetch",
        alias = "jwks_refetch_secs",
        with = "de::secs"
    )]
    pub jwks_refetch: Duration,
}

/// The audit journal, checkpoints and shipping to the warehouse.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Local journal directory (default: `gateway.data_dir`/journal).
    pub journal_dir: Option<PathBuf>,
    /// Ed25519 PKCS#8 key that signs checkpoints.
    pub signing_key: PathBuf,
    /// 32-byte hex secret of the citizen pseudonyms (HMAC-SHA-256).
    pub pseudonym_key: PathBuf,
    #[serde(default = "default_checkpoint_every", deserialize_with = "de::positive")]
    pub checkpoint_every: u64,
    #[serde(
        default = "default_checkpoint_interval",
        alias = "checkpoint_interval_secs",
        with = "de::secs"
    )]
    pub checkpoint_interval: Duration,
    /// Journal segment size; the next segment is written full of zeros
    /// ahead of use (docs/audit.md, "The journal").
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Undelivered events beyond which the gateway fails closed (503).
    #[serde(default = "default_max_backlog_events")]
    pub max_backlog_events: u64,
    /// How long the warehouse may make no progress on a backlog before the
    /// gateway fails closed.
    #[serde(
        default = "default_max_backlog_age",
        alias = "max_backlog_age_secs",
        with = "de::secs"
    )]
    pub max_backlog_age: Duration,
    #[serde(default = "default_ship_batch", deserialize_with = "de::positive")]
    pub ship_batch: usize,
    /// Delivered journal segments are kept this long.
    #[serde(default = "default_retention", alias = "retention_hours", with = "de::hours")]
    pub retention: Duration,
    /// How often expired warehouse records are purged.
    #[serde(
        default = "default_purge_interval",
        alias = "purge_interval_secs",
        with = "de::secs"
    )]
    pub purge_interval: Duration,
    /// Checkpoint keys `GET /audit/v1/verify` trusts (JSON, see docs/audit.md);
    /// without it the keys recorded in the warehouse are used.
    #[serde(default)]
    pub trusted_keys: Option<PathBuf>,
    /// A disclosure hold longer than this needs a second auditor's approval
    /// (until then it is in force for this long).
    #[serde(default = "default_hold_without_approval", with = "de::secs")]
    pub hold_without_approval: Duration,
    /// A shipper that delivered nothing for this long while events wait is
    /// reported `stuck` by `/readyz`.
    #[serde(default = "default_shipper_stuck_after", with = "de::secs")]
    pub shipper_stuck_after: Duration,
}

fn default_shipper_stuck_after() -> Duration {
    DEFAULT_SHIPPER_STUCK_AFTER
}

fn default_hold_without_approval() -> Duration {
    DEFAULT_HOLD_WITHOUT_APPROVAL
}

impl AuditSection {
    /// The defaults, with these keys.
    pub fn with_keys(signing_key: PathBuf, pseudonym_key: PathBuf) -> AuditSection {
        AuditSection {
            journal_dir: None,
            signing_key,
            pseudonym_key,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_backlog_events: DEFAULT_MAX_BACKLOG_EVENTS,
            max_backlog_age: DEFAULT_MAX_BACKLOG_AGE,
            ship_batch: DEFAULT_SHIP_BATCH,
            retention: DEFAULT_JOURNAL_RETENTION,
            purge_interval: DEFAULT_PURGE_INTERVAL,
            trusted_keys: None,
            hold_without_approval: DEFAULT_HOLD_WITHOUT_APPROVAL,
            shipper_stuck_after: DEFAULT_SHIPPER_STUCK_AFTER,
        }
    }

    pub fn journal_dir(&self, data_dir: &Path) -> PathBuf {
        self.journal_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("journal"))
    }
}

fn default_checkpoint_every() -> u64 {
    DEFAULT_CHECKPOINT_EVERY
}
fn default_checkpoint_interval() -> Duration {
    DEFAULT_CHECKPOINT_INTERVAL
}
fn default_segment_bytes() -> u64 {
    DEFAULT_SEGMENT_BYTES
}
fn default_max_backlog_events() -> u64 {
    DEFAULT_MAX_BACKLOG_EVENTS
}
fn default_max_backlog_age() -> Duration {
    DEFAULT_MAX_BACKLOG_AGE
}
fn default_ship_batch() -> usize {
    DEFAULT_SHIP_BATCH
}
fn default_retention() -> Duration {
    DEFAULT_JOURNAL_RETENTION
}
fn default_purge_interval() -> Duration {
    DEFAULT_PURGE_INTERVAL
}

/// Rate limits (per minute unless named otherwise).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsSection {
    pub per_app_per_minute: u32,
    pub per_officer_per_minute: u32,
    /// The quota the national database grants the province.
    pub upstream_per_second: u32,
    /// Anti-scraping: distinct citizens one officer may look up per hour.
    pub distinct_citizens_per_officer_per_hour: u32,
    /// Multiplies every limit; limits remain enforced.
    #[serde(deserialize_with = "de::positive_scale")]
    pub scale: f64,
    /// Every limit shared by all instances in Redis (or Valkey):
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`, or `rediss://` for TLS. Without
    /// it each instance enforces every limit on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// The CA of a `rediss://` server's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca: Option<PathBuf>,
}

impl Default for RateLimitsSection {
    fn default() -> Self {
        RateLimitsSection {
            per_app_per_minute: DEFAULT_PER_APP_PER_MINUTE,
            per_officer_per_minute: DEFAULT_PER_OFFICER_PER_MINUTE,
            upstream_per_second: DEFAULT_UPSTREAM_PER_SECOND,
            distinct_citizens_per_officer_per_hour: DEFAULT_DISTINCT_CITIZENS_PER_HOUR,
            scale: 1.0,
            redis_url: None,
            redis_ca: None,
        }
    }
}

impl RateLimitsSection {
    pub fn settings(&self) -> crate::limits::RateSettings {
        crate::limits::RateSettings {
            per_app_per_minute: self.per_app_per_minute,
            per_officer_per_minute: self.per_officer_per_minute,
            upstream_per_second: self.upstream_per_second,
            distinct_citizens_per_officer_per_hour: self.distinct_citizens_per_officer_per_hour,
            scale: self.scale,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseSection {
    /// The gateway's own (INSERT-only on audit tables) login. When unset, an
    /// embedded cluster is started in `gateway.data_dir`.
    pub url: Option<String>,
    /// A login allowed to create the schema; migrations run with it when set,
    /// with `url` otherwise.
    pub admin_url: Option<String>,
    /// `disable` or `verify-full` (TLS, the server's certificate checked
    /// against `ca` and its name against the URL's host). Default: disable
    /// for a warehouse on loopback, verify-full for any other.
    #[serde(default)]
    pub tls: Option<WarehouseTlsMode>,
    /// CA certificate(s) (PEM) of the warehouse's server certificate.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// How the gateway reaches its warehouse (PostgreSQL's `sslmode` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarehouseTlsMode {
    Disable,
    VerifyFull,
}

impl WarehouseSection {
    /// The mode in force: the configured one, else by where the warehouse is.
    pub fn tls_mode(&self) -> WarehouseTlsMode {
        let on_loopback = |url: &str| {
            url.parse::<tokio_postgres::Config>().is_ok_and(|c| {
                c.get_hosts().iter().all(|h| match h {
                    tokio_postgres::config::Host::Tcp(name) => {
                        name == "localhost"
                            || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
                    }
                    tokio_postgres::config::Host::Unix(_) => true,
                })
            })
        };
        match (self.tls, &self.url) {
            (Some(mode), _) => mode,
            (None, None) => WarehouseTlsMode::Disable,
            (None, Some(url)) if on_loopback(url) => WarehouseTlsMode::Disable,
            (None, Some(_)) => WarehouseTlsMode::VerifyFull,
        }
    }

    /// The TLS the warehouse's connections use.
    pub fn tls(&self) -> anyhow::Result<crate::warehouse::WarehouseTls> {
        match (self.tls_mode(), &self.ca) {
            (WarehouseTlsMode::Disable, _) => Ok(crate::warehouse::WarehouseTls::Disable),
            (WarehouseTlsMode::VerifyFull, Some(ca)) => crate::warehouse::WarehouseTls::verify_full(ca),
            (WarehouseTlsMode::VerifyFull, None) => {
                anyhow::bail!("warehouse.ca is required: the warehouse is reached with tls = \"verify-full\"")
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_connections: usize,
    pub max_connections_per_certificate: usize,
    #[serde(alias = "handshake_timeout_ms", with = "de::millis")]
    pub handshake_timeout: Duration,
    #[serde(alias = "header_read_timeout_ms", with = "de::millis")]
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    #[serde(alias = "request_timeout_ms", with = "de::millis")]
    pub request_timeout: Duration,
    pub max_concurrent_streams: u32,
    #[serde(alias = "drain_timeout_ms", with = "de::millis")]
    pub drain_timeout: Duration,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_certificate: DEFAULT_MAX_CONNECTIONS_PER_CERTIFICATE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

impl LimitsSection {
    pub fn server_limits(&self) -> crate::server::ServerLimits {
        crate::server::ServerLimits {
            max_connections: self.max_connections,
            max_connections_per_certificate: self.max_connections_per_certificate,
            handshake_timeout: self.handshake_timeout,
            header_read_timeout: self.header_read_timeout,
            max_header_bytes: self.max_header_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            drain_timeout: self.drain_timeout,
            ..crate::server::ServerLimits::default()
        }
    }
}

fn default_gateway_listen() -> SocketAddr {
    DEFAULT_GATEWAY_LISTEN
}
fn default_ops_listen() -> SocketAddr {
    DEFAULT_OPS_LISTEN
}
fn default_instance_id() -> String {
    DEFAULT_INSTANCE_ID.to_owned()
}
fn default_province() -> u16 {
    DEFAULT_PROVINCE
}
fn default_upstream_timeout() -> Duration {
    DEFAULT_UPSTREAM_TIMEOUT
}
fn default_upstream_connect_timeout() -> Duration {
    DEFAULT_UPSTREAM_CONNECT_TIMEOUT
}
fn default_upstream_max_response_bytes() -> usize {
    DEFAULT_UPSTREAM_MAX_RESPONSE_BYTES
}
fn default_token_algorithms() -> Vec<String> {
    DEFAULT_TOKEN_ALGORITHMS.iter().map(|a| (*a).to_owned()).collect()
}
fn default_token_leeway() -> Duration {
    DEFAULT_TOKEN_LEEWAY
}
fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}
fn default_jwks_refetch() -> Duration {
    DEFAULT_JWKS_REFETCH
}
fn default_service_code() -> String {
    DEFAULT_SERVICE_CODE.to_owned()
}
fn default_integration_code() -> String {
    DEFAULT_INTEGRATION_CODE.to_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}:{col}: {message}")]
    Invalid {
        path: String,
        line: usize,
        col: usize,
        message: String,
    },
}

impl TokensSection {
    /// The configured algorithms, or the first one that is not allowed.
    pub fn algorithm_list(&self) -> Result<Vec<jsonwebtoken::Algorithm>, String> {
        self.algorithms
            .iter()
            .map(|name| {
                name.parse::<jsonwebtoken::Algorithm>()
                    .ok()
                    .filter(|a| crate::auth::token::ASYMMETRIC_ALGORITHMS.contains(a))
                    .ok_or_else(|| name.clone())
            })
            .collect()
    }

    pub fn verifier_settings(&self) -> crate::auth::token::VerifierSettings {
        use crate::auth::token::JwksSource;
        let source = match (&self.jwks, &self.jwks_url) {
            (Some(path), _) => JwksSource::File(path.clone()),
            (None, url) => JwksSource::Url {
                url: url.as_ref().map(Uri::to_string).unwrap_or_default(),
                ca: self.jwks_ca.clone(),
            },
        };
        crate::auth::token::VerifierSettings {
            source,
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            algorithms: self.algorithm_list().unwrap_or_default(),
            leeway_secs: self.leeway.as_secs(),
            max_token_bytes: self.max_token_bytes,
            refetch_interval: self.jwks_refetch,
        }
    }
}

impl Config {
    /// A complete config on the defaults for the development PKI in `layout`:
    /// the demo identity provider's tokens, the simulator at `upstream_url`,
    /// an embedded warehouse in `data_dir`, listeners on free loopback ports
    /// chosen by the caller (`127.0.0.1:0` here).
    pub fn development(
        layout: &crate::tls::pki::PkiLayout,
        upstream_url: Uri,
        policies: PathBuf,
        data_dir: PathBuf,
    ) -> Config {
        use crate::tls::pki::{DEMO_TOKEN_AUDIENCE, DEMO_TOKEN_ISSUER};
        let loopback = SocketAddr::new(LOOPBACK, 0);
        Config {
            gateway: GatewaySection {
                listen: loopback,
                ops_listen: loopback,
                instance_id: default_instance_id(),
                province: DEFAULT_PROVINCE,
                policies,
                data_dir,
                admin_apps: default_admin_apps(),
                audit_apps: default_audit_apps(),
                freeze_confirm_within: DEFAULT_FREEZE_CONFIRM_WITHIN,
            },
            tls: TlsSection {
                cert: layout.gateway_cert(),
                key: layout.gateway_key(),
                client_ca: layout.apps_ca_cert(),
                allow_tls12: false,
                crls: Vec::new(),
            },
            upstream: UpstreamSection {
                url: upstream_url,
                ca: layout.national_ca_cert(),
                cert: layout.upstream_client_cert(),
                key: layout.upstream_client_key(),
                timeout: DEFAULT_UPSTREAM_TIMEOUT,
                connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
                max_response_bytes: DEFAULT_UPSTREAM_MAX_RESPONSE_BYTES,
                service_code: default_service_code(),
                integration_code: default_integration_code(),
                circuit_failures: DEFAULT_CIRCUIT_FAILURES,
                circuit_open: DEFAULT_CIRCUIT_OPEN,
                http1_connections: None,
            },
            tokens: TokensSection {
                jwks: Some(layout.jwks()),
                jwks_url: None,
                jwks_ca: None,
                issuer: DEMO_TOKEN_ISSUER.to_owned(),
                audience: DEMO_TOKEN_AUDIENCE.to_owned(),
                algorithms: default_token_algorithms(),
                leeway: DEFAULT_TOKEN_LEEWAY,
                max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
                jwks_refetch: DEFAULT_JWKS_REFETCH,
            },
            audit: AuditSection::with_keys(layout.audit_signing_key(), layout.pseudonym_key()),
            rate_limits: RateLimitsSection::default(),
            warehouse: WarehouseSection::default(),
            limits: LimitsSection::default(),
            alerts: AlertsSection::default(),
            telemetry: TelemetrySection::default(),
            console: None,
        }
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &path.display().to_string(), base)
    }

    /// Parses config text; `base` anchors relative paths.
    pub fn parse(text: &str, name: &str, base: &Path) -> Result<Config, ConfigError> {
        let invalid = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, col) = crate::policy::line_col(text, span.map_or(0, |s| s.start));
            ConfigError::Invalid {
                path: name.to_owned(),
                line,
                col,
                message,
            }
        };
        // Checks of one value run as it is read (see `de`), so the error
        // carries that value's position.
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let message = e.message().trim();
            let message = match e.span().and_then(|span| key_of_value(text, span.start)) {
                Some(key) => format!("{key}: {message}"),
                None => message.to_owned(),
            };
            invalid(e.span(), message)
        })?;
        let t = &config.tokens;
        if t.jwks.is_some() == t.jwks_url.is_some() {
            let at = key_span(text, "tokens", if t.jwks.is_some() { "jwks_url" } else { "jwks" })
                .or_else(|| key_span(text, "tokens", "jwks"))
                .or_else(|| section_span(text, "tokens"));
            return Err(invalid(
                at,
                "tokens: set exactly one of jwks (a file) and jwks_url".to_owned(),
            ));
        }
        if let Some(ca) = config.tokens.jwks_ca.as_mut() {
            if ca.is_relative() {
                *ca = base.join(&*ca);
            }
        }
        if let Some(jwks) = config.tokens.jwks.as_mut() {
            if jwks.is_relative() {
                *jwks = base.join(&*jwks);
            }
        }
        if config.warehouse.tls_mode() == WarehouseTlsMode::VerifyFull && config.warehouse.ca.is_none() {
            let at = key_span(text, "warehouse", "url").or_else(|| section_span(text, "warehouse"));
            return Err(invalid(
                at,
                "warehouse: a warehouse off loopback is reached with tls = \"verify-full\"; set warehouse.ca to its CA \
                 certificate (or tls = \"disable\" on a trusted network)"
                    .to_owned(),
            ));
        }
        if let Some(ca) = config.warehouse.ca.as_mut() {
            if ca.is_relative() {
                *ca = base.join(&*ca);
            }
        }
        if let Some(keys) = config.audit.trusted_keys.as_mut() {
            if keys.is_relative() {
                *keys = base.join(&*keys);
            }
        }
        if let Some(dir) = config.audit.journal_dir.as_mut() {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        if let Some(ca) = config.rate_limits.redis_ca.as_mut() {
            if ca.is_relative() {
                *ca = base.join(&*ca);
            }
        }
        if let Some(c) = config.console.as_mut() {
            for p in [
                Some(&mut c.oidc.client_secret_file),
                Some(&mut c.oidc.ca),
                c.client_ca.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        for crl in config.tls.crls.iter_mut() {
            if crl.is_relative() {
                *crl = base.join(&*crl);
            }
        }
        let al = &mut config.alerts;
        for p in [
            &mut al.rules,
            &mut al.webhook_ca,
            &mut al.webhook_cert,
            &mut al.webhook_key,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [
            &mut config.audit.signing_key,
            &mut config.audit.pseudonym_key,
            &mut config.gateway.policies,
            &mut config.gateway.data_dir,
            &mut config.tls.cert,
            &mut config.tls.key,
            &mut config.tls.client_ca,
            &mut config.upstream.ca,
            &mut config.upstream.cert,
            &mut config.upstream.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    /// The config as TOML text (for the demo's `gateway.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// The span of `key` in `[section]`, when the file sets it.
fn key_span(text: &str, section: &str, key: &str) -> Option<std::ops::Range<usize>> {
    type Spans =
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, toml::Spanned<toml::Value>>>;
    let spans: Spans = toml::from_str(text).ok()?;
    spans.get(section)?.get(key).map(toml::Spanned::span)
}

/// `section.key` of the value that starts at byte `at`, when `at` is a
/// value after `key =` on its line (not a key, not a header).
fn key_of_value(text: &str, at: usize) -> Option<String> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = text[line_start..at].split_once('=')?;
    let key = key.trim();
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return None;
    }
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']'));
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_owned(),
    })
}

/// The span of the `[section]` header line.
fn section_span(text: &str, section: &str) -> Option<std::ops::Range<usize>> {
    let header = format!("[{section}]");
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.trim() == header {
            return Some(at..at + line.len());
        }
        at += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[gateway]
policies = "policies"
data_dir = "var"

[tls]
cert = "certs/gateway.pem"
key = "certs/gateway.key"
client_ca = "certs/apps-ca.pem"

[upstream]
url = "https://127.0.0.1:7443"
ca = "certs/national-ca.pem"
cert = "certs/upstream-client.pem"
key = "certs/upstream-client.key"

[tokens]
jwks = "certs/jwks.json"
issuer = "urn:popgate:demo-idp"
audience = "urn:popgate:gateway"

[audit]
signing_key = "certs/audit-signing.key"
pseudonym_key = "certs/pseudonym.key"
"#;

    #[test]
    fn defaults_apply_and_paths_are_resolved() {
        let c = Config::parse(MINIMAL, "gw.toml", Path::new("/etc/popgate")).expect("valid");
        assert_eq!(c.gateway.province, 79);
        assert_eq!(c.limits.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.tls.cert, PathBuf::from("/etc/popgate/certs/gateway.pem"));
        assert!(c.warehouse.url.is_none());
        assert_eq!(c.tokens.jwks, Some(PathBuf::from("/etc/popgate/certs/jwks.json")));
        assert_eq!(c.tokens.algorithm_list().map(|a| a.len()), Ok(2));
    }

    /// Where `needle` (a line of `text`) is, as `FILE:LINE:COL`'s LINE.
    fn line_of(text: &str, needle: &str) -> usize {
        1 + text
            .lines()
            .position(|l| l.trim_start().starts_with(needle))
            .expect("needle in text")
    }

    fn refused_at(text: &str, needle: &str, says: &str) {
        let err = Config::parse(text, "gw.toml", Path::new(".")).expect_err(needle);
        let msg = err.to_string();
        let line = line_of(text, needle);
        assert!(msg.starts_with(&format!("gw.toml:{line}:")), "{needle}: {msg}");
        assert!(msg.contains(says), "{needle}: {msg}");
    }

    #[test]
    fn each_semantic_check_names_the_line_of_the_value() {
        let with = |section: &str, line: &str| {
            MINIMAL.replacen(&format!("[{section}]\n"), &format!("[{section}]\n{line}\n"), 1)
        };
        refused_at(
            &with("gateway", "province = 99"),
            "province = 99",
            "not a province code",
        );
        refused_at(
            &MINIMAL.replace(
                "url = \"https://127.0.0.1:7443\"",
                "url = \"http://127.0.0.1:7443\"",
            ),
            "url = \"http://",
            "https:// URL",
        );
        refused_at(
            &with("tokens", "jwks_url = \"https://idp.example/jwks.json\""),
            "jwks_url",
            "exactly one of jwks",
        );
        refused_at(
            &with("tokens", "leeway_secs = 300"),
            "leeway_secs",
            "tokens.leeway_secs: must be at most 30",
        );
        refused_at(&with("tokens", "algorithms = [\"HS256\"]"), "algorithms", "HS256");
        refused_at(
            &format!("{MINIMAL}\n[rate_limits]\nscale = 0.0\n"),
            "scale",
            "positive",
        );
        refused_at(
            &with("audit", "checkpoint_every = 0"),
            "checkpoint_every",
            "positive",
        );
        refused_at(&with("audit", "ship_batch = 0"), "ship_batch", "positive");
        refused_at(
            &with("upstream", "http1_connections = 0"),
            "http1_connections",
            "nonzero",
        );
    }

    #[test]
    fn durations_take_units_and_the_old_keys() {
        let text = MINIMAL.replace(
            "[upstream]\n",
            "[upstream]\ntimeout = \"750ms\"\nconnect_timeout_ms = 1500\n",
        );
        let c = Config::parse(&text, "gw.toml", Path::new(".")).expect("valid");
        assert_eq!(c.upstream.timeout, Duration::from_millis(750));
        assert_eq!(c.upstream.connect_timeout, Duration::from_millis(1500));
        let text = MINIMAL.replace(
            "[audit]\n",
            "[audit]\nretention = \"2d\"\npurge_interval_secs = 60\n",
        );
        let c = Config::parse(&text, "gw.toml", Path::new(".")).expect("valid");
        assert_eq!(c.audit.retention, Duration::from_secs(2 * 86_400));
        assert_eq!(c.audit.purge_interval, Duration::from_secs(60));
        let text = MINIMAL.replace("[upstream]\n", "[upstream]\ntimeout = \"soon\"\n");
        refused_at(&text, "timeout = \"soon\"", "a duration such as");
    }

    #[test]
    fn the_readme_configuration_block_is_a_valid_config() {
        let readme = include_str!("../../README.md");
        let block = readme
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("README has a toml block");
        let c = Config::parse(block, "README.md", Path::new("/etc/popgate")).expect("README's config parses");
        assert_eq!(c.upstream.timeout, DEFAULT_UPSTREAM_TIMEOUT);
        assert_eq!(c.audit.max_backlog_age, DEFAULT_MAX_BACKLOG_AGE);
        assert_eq!(c.limits.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
    }

    #[test]
    fn listener_defaults_are_the_servers() {
        let c = Config::parse(MINIMAL, "gw.toml", Path::new(".")).expect("valid");
        let from_config = c.limits.server_limits();
        let server = crate::server::ServerLimits::default();
        assert_eq!(from_config.max_header_bytes, server.max_header_bytes);
        assert_eq!(from_config.handshake_timeout, server.handshake_timeout);
        assert_eq!(from_config.drain_timeout, server.drain_timeout);
    }

    #[test]
    fn hmac_algorithms_and_large_leeway_are_refused() {
        let text = MINIMAL.replace("audience = ", "algorithms = [\"HS256\"]\naudience = ");
        let err = Config::parse(&text, "gw.toml", Path::new(".")).expect_err("HS256");
        assert!(err.to_string().contains("HS256"), "{err}");
        let text = MINIMAL.replace("audience = ", "leeway_secs = 300\naudience = ");
        assert!(Config::parse(&text, "gw.toml", Path::new(".")).is_err());
    }

    #[test]
    fn unknown_keys_are_refused_with_a_location() {
        let text = MINIMAL.replace("[tls]\n", "[tls]\nsert = 1\n");
        let err = Config::parse(&text, "gw.toml", Path::new(".")).expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.starts_with("gw.toml:7:1: unknown field `sert`"), "{msg}");
    }

    #[test]
    fn round_trips_through_toml() {
        let c = Config::parse(MINIMAL, "gw.toml", Path::new("/x")).expect("valid");
        let again = Config::parse(&c.to_toml(), "again.toml", Path::new("/y")).expect("valid");
        assert_eq!(again.tls.cert, c.tls.cert);
        assert_eq!(again.upstream.url, c.upstream.url);
        assert_eq!(again.upstream.timeout, c.upstream.timeout);
    }
}
