//! The one way popgate builds an HTTPS client (hyper over rustls): the
//! upstream leg to the national database, the JWKS fetch, the `admin` and
//! `audit` commands, and the tests' and benchmarks' callers all take theirs
//! from [`https_client`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;

/// An HTTPS client sending `Full<Bytes>` bodies.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Which HTTP versions a client offers (by ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersions {
    Http1,
    Http2,
    Both,
}

/// How a client connects and keeps connections.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub versions: HttpVersions,
    /// Bound on the TCP connect; `None`: the system's.
    pub connect_timeout: Option<Duration>,
    pub max_idle_per_host: usize,
    pub idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            versions: HttpVersions::Both,
            connect_timeout: None,
            max_idle_per_host: 64,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// An HTTPS-only client with `tls` (whose ALPN hyper-rustls sets from
/// `options.versions`).
pub fn https_client(tls: ClientConfig, options: &ClientOptions) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(options.connect_timeout);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let https = match options.versions {
        HttpVersions::Http1 => builder.enable_http1().wrap_connector(http),
        HttpVersions::Http2 => builder.enable_http2().wrap_connector(http),
        HttpVersions::Both => builder.enable_http1().enable_http2().wrap_connector(http),
    };
    let mut client = Client::builder(TokioExecutor::new());
    client
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(options.idle_timeout)
        .pool_max_idle_per_host(options.max_idle_per_host)
        .http2_only(options.versions == HttpVersions::Http2);
    client.build(https)
}
