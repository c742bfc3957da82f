//! The gateway's TOML configuration (`popgate serve --config FILE`): parsed
//! once into typed values, every default a named constant, relative paths
//! resolved against the config file's directory. A bad file is refused with
//! `FILE:LINE:COL: what is wrong`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_PROVINCE: u16 = 79;
pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_OPS_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_UPSTREAM_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
pub const DEFAULT_CIRCUIT_FAILURES: u32 = 5;
pub const DEFAULT_CIRCUIT_OPEN_SECS: u64 = 10;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_CONNECTIONS_PER_CERTIFICATE: usize = 1_000;
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
pub const DEFAULT_TOKEN_LEEWAY_SECS: u64 = 30;
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
pub const DEFAULT_JWKS_REFETCH_SECS: u64 = 30;
pub const DEFAULT_PER_APP_PER_MINUTE: u32 = 3_000;
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1_000;
pub const DEFAULT_CHECKPOINT_INTERVAL_SECS: u64 = 10;
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_MAX_BACKLOG_EVENTS: u64 = 5_000_000;
pub const DEFAULT_MAX_BACKLOG_AGE_SECS: u64 = 6 * 3600;
pub const DEFAULT_SHIP_BATCH: usize = 1_000;
pub const DEFAULT_JOURNAL_RETENTION_HOURS: u64 = 24;
pub const DEFAULT_PURGE_INTERVAL_SECS: u64 = 3_600;
pub const DEFAULT_PER_OFFICER_PER_MINUTE: u32 = 60;
pub const DEFAULT_UPSTREAM_PER_SECOND: u32 = 200;
pub const DEFAULT_DISTINCT_CITIZENS_PER_HOUR: u32 = 300;
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 15_000;
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10_000;

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
    #[serde(default = "default_province")]
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
}

fn default_admin_apps() -> Vec<String> {
    vec!["admin-cli".to_owned()]
}
fn default_audit_apps() -> Vec<String> {
    vec!["audit-cli".to_owned()]
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
    /// Base URL of the national database's services.
    pub url: String,
    /// CA of the national database's server certificate.
    pub ca: PathBuf,
    /// The province's client certificate and key for the national database.
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "default_upstream_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_upstream_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
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
    #[serde(default = "default_circuit_open_secs")]
    pub circuit_open_secs: u64,
}

fn default_circuit_failures() -> u32 {
    DEFAULT_CIRCUIT_FAILURES
}
fn default_circuit_open_secs() -> u64 {
    DEFAULT_CIRCUIT_OPEN_SECS
}

/// How officer tokens are verified.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensSection {
    /// The identity provider's JWK set, from a file ...
    pub jwks: Option<PathBuf>,
    /// ... or from an HTTPS URL, trusted through `jwks_ca`.
    pub jwks_url: Option<String>,
    pub jwks_ca: Option<PathBuf>,
    pub issuer: String,
    pub audience: String,
    /// Accepted signing algorithms (asymmetric only).
    #[serde(default = "default_token_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock-skew allowance for exp/nbf/iat, at most 30 s.
    #[serde(default = "default_token_leeway_secs")]
    pub leeway_secs: u64,
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// An unknown `kid` reloads the key set at most this often.
    #[serde(default = "default_jwks_refetch_secs")]
    pub jwks_refetch_secs: u64,
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
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    #[serde(default = "default_checkpoint_interval_secs")]
    pub checkpoint_interval_secs: u64,
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Undelivered events beyond which the gateway fails closed (503).
    #[serde(default = "default_max_backlog_events")]
    pub max_backlog_events: u64,
    /// How long the warehouse may make no progress on a backlog before the
    /// gateway fails closed.
    #[serde(default = "default_max_backlog_age_secs")]
    pub max_backlog_age_secs: u64,
    #[serde(default = "default_ship_batch")]
    pub ship_batch: usize,
    /// Delivered journal segments are kept this long.
    #[serde(default = "default_retention_hours")]
    pub retention_hours: u64,
    /// How often expired warehouse records are purged.
    #[serde(default = "default_purge_interval_secs")]
    pub purge_interval_secs: u64,
    /// Checkpoint keys `GET /audit/v1/verify` trusts (JSON, see docs/audit.md);
    /// without it the keys recorded in the warehouse are used.
    #[serde(default)]
    pub trusted_keys: Option<PathBuf>,
}

impl AuditSection {
    /// The defaults, with these keys.
    pub fn with_keys(signing_key: PathBuf, pseudonym_key: PathBuf) -> AuditSection {
        AuditSection {
            journal_dir: None,
            signing_key,
            pseudonym_key,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            checkpoint_interval_secs: DEFAULT_CHECKPOINT_INTERVAL_SECS,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_backlog_events: DEFAULT_MAX_BACKLOG_EVENTS,
            max_backlog_age_secs: DEFAULT_MAX_BACKLOG_AGE_SECS,
            ship_batch: DEFAULT_SHIP_BATCH,
            retention_hours: DEFAULT_JOURNAL_RETENTION_HOURS,
            purge_interval_secs: DEFAULT_PURGE_INTERVAL_SECS,
            trusted_keys: None,
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
fn default_checkpoint_interval_secs() -> u64 {
    DEFAULT_CHECKPOINT_INTERVAL_SECS
}
fn default_segment_bytes() -> u64 {
    DEFAULT_SEGMENT_BYTES
}
fn default_max_backlog_events() -> u64 {
    DEFAULT_MAX_BACKLOG_EVENTS
}
fn default_max_backlog_age_secs() -> u64 {
    DEFAULT_MAX_BACKLOG_AGE_SECS
}
fn default_ship_batch() -> usize {
    DEFAULT_SHIP_BATCH
}
fn default_retention_hours() -> u64 {
    DEFAULT_JOURNAL_RETENTION_HOURS
}
fn default_purge_interval_secs() -> u64 {
    DEFAULT_PURGE_INTERVAL_SECS
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
    pub scale: f64,
}

impl Default for RateLimitsSection {
    fn default() -> Self {
        RateLimitsSection {
            per_app_per_minute: DEFAULT_PER_APP_PER_MINUTE,
            per_officer_per_minute: DEFAULT_PER_OFFICER_PER_MINUTE,
            upstream_per_second: DEFAULT_UPSTREAM_PER_SECOND,
            distinct_citizens_per_officer_per_hour: DEFAULT_DISTINCT_CITIZENS_PER_HOUR,
            scale: 1.0,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_connections: usize,
    pub max_connections_per_certificate: usize,
    pub handshake_timeout_ms: u64,
    pub header_read_timeout_ms: u64,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub request_timeout_ms: u64,
    pub max_concurrent_streams: u32,
    pub drain_timeout_ms: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_certificate: DEFAULT_MAX_CONNECTIONS_PER_CERTIFICATE,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
        }
    }
}

impl LimitsSection {
    pub fn server_limits(&self) -> crate::server::ServerLimits {
        crate::server::ServerLimits {
            max_connections: self.max_connections,
            max_connections_per_certificate: self.max_connections_per_certificate,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            max_header_bytes: self.max_header_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            ..crate::server::ServerLimits::default()
        }
    }
}

fn default_gateway_listen() -> SocketAddr {
    DEFAULT_GATEWAY_LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8443)))
}
fn default_ops_listen() -> SocketAddr {
    DEFAULT_OPS_LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9090)))
}
fn default_instance_id() -> String {
    "gw-1".to_owned()
}
fn default_province() -> u16 {
    DEFAULT_PROVINCE
}
fn default_upstream_timeout_ms() -> u64 {
    DEFAULT_UPSTREAM_TIMEOUT_MS
}
fn default_upstream_connect_timeout_ms() -> u64 {
    DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS
}
fn default_upstream_max_response_bytes() -> usize {
    DEFAULT_UPSTREAM_MAX_RESPONSE_BYTES
}
fn default_token_algorithms() -> Vec<String> {
    vec!["ES256".to_owned(), "EdDSA".to_owned()]
}
fn default_token_leeway_secs() -> u64 {
    DEFAULT_TOKEN_LEEWAY_SECS
}
fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}
fn default_jwks_refetch_secs() -> u64 {
    DEFAULT_JWKS_REFETCH_SECS
}
fn default_service_code() -> String {
    "POPGATE".to_owned()
}
fn default_integration_code() -> String {
    "POPGATE-79".to_owned()
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
                url: url.clone().unwrap_or_default(),
                ca: self.jwks_ca.clone(),
            },
        };
        crate::auth::token::VerifierSettings {
            source,
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            algorithms: self.algorithm_list().unwrap_or_default(),
            leeway_secs: self.leeway_secs,
            max_token_bytes: self.max_token_bytes,
            refetch_interval: Duration::from_secs(self.jwks_refetch_secs),
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
        upstream_url: String,
        policies: PathBuf,
        data_dir: PathBuf,
    ) -> Config {
        use crate::tls::pki::{DEMO_TOKEN_AUDIENCE, DEMO_TOKEN_ISSUER};
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
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
                timeout_ms: DEFAULT_UPSTREAM_TIMEOUT_MS,
                connect_timeout_ms: DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS,
                max_response_bytes: DEFAULT_UPSTREAM_MAX_RESPONSE_BYTES,
                service_code: default_service_code(),
                integration_code: default_integration_code(),
                circuit_failures: DEFAULT_CIRCUIT_FAILURES,
                circuit_open_secs: DEFAULT_CIRCUIT_OPEN_SECS,
            },
            tokens: TokensSection {
                jwks: Some(layout.jwks()),
                jwks_url: None,
                jwks_ca: None,
                issuer: DEMO_TOKEN_ISSUER.to_owned(),
                audience: DEMO_TOKEN_AUDIENCE.to_owned(),
                algorithms: default_token_algorithms(),
                leeway_secs: DEFAULT_TOKEN_LEEWAY_SECS,
                max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
                jwks_refetch_secs: DEFAULT_JWKS_REFETCH_SECS,
            },
            audit: AuditSection::with_keys(layout.audit_signing_key(), layout.pseudonym_key()),
            rate_limits: RateLimitsSection::default(),
            warehouse: WarehouseSection::default(),
            limits: LimitsSection::default(),
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
        let mut config: Config =
            toml::from_str(text).map_err(|e| invalid(e.span(), e.message().trim().to_owned()))?;
        if crate::units::Units::get()
            .province(config.gateway.province)
            .is_none()
        {
            return Err(invalid(
                None,
                format!(
                    "gateway.province {} is not a province code",
                    config.gateway.province
                ),
            ));
        }
        if !config.upstream.url.starts_with("https://") {
            return Err(invalid(None, "upstream.url must be an https:// URL".to_owned()));
        }
        let t = &config.tokens;
        if t.jwks.is_some() == t.jwks_url.is_some() {
            return Err(invalid(
                None,
                "tokens: set exactly one of jwks (a file) and jwks_url".to_owned(),
            ));
        }
        if t.leeway_secs > crate::auth::token::MAX_LEEWAY_SECS {
            return Err(invalid(
                None,
                format!(
                    "tokens.leeway_secs must be at most {}",
                    crate::auth::token::MAX_LEEWAY_SECS
                ),
            ));
        }
        if let Err(bad) = config.tokens.algorithm_list() {
            return Err(invalid(
                None,
                format!("tokens.algorithms: '{bad}' is not an allowed asymmetric algorithm"),
            ));
        }
        if !(config.rate_limits.scale > 0.0 && config.rate_limits.scale.is_finite()) {
            return Err(invalid(
                None,
                "rate_limits.scale must be a positive number".to_owned(),
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
        if config.audit.checkpoint_every == 0 || config.audit.ship_batch == 0 {
            return Err(invalid(
                None,
                "audit.checkpoint_every and audit.ship_batch must be positive".to_owned(),
            ));
        }
        for crl in config.tls.crls.iter_mut() {
            if crl.is_relative() {
                *crl = base.join(&*crl);
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
    }
}
