//! popgate: the one secured door between a province's applications and the
//! national population database.
//!
//! # Layout
//!
//! Each concern is one module; arrows point down (`tests/layout.rs` checks
//! that no file of `src/` is part of an import circle).
//!
//! - [`config`]: the gateway's TOML config, typed once, defaults as named constants.
//! - [`gateway`]: building a gateway from a config, its background tasks, reload, the ordered stop.
//! - [`tls`]: rustls server/client configs, PEM loading, the HTTPS client builder; [`tls::pki`] the dev PKI.
//! - [`auth`]: which app is calling, from its client certificate; officer tokens.
//! - [`personal_id`]: the 12-digit personal ID and its structural checks.
//! - [`limits`]: rate limits per app, officer, purpose, upstream quota, anti-scraping;
//!   [`limits::shared`] the same limits for every instance in Redis.
//! - [`metrics`]: Prometheus counters, histograms and gauges (no citizen data in labels).
//! - [`policy`]: field catalog, purposes, apps and grants; evaluation and masks;
//!   [`policy::release`] per-person release (every person an answer carries);
//!   [`policy::signature`] signed versions; [`policy::store`] the one writer of
//!   the active snapshot; [`policy::diff`]; the built-in sample set.
//! - [`telemetry`]: request traces (W3C `traceparent`) exported over OTLP/HTTP JSON.
//! - [`upstream`]: the national-DB adapter trait and its mTLS HTTP client.
//! - [`server`]: accepting connections: TLS, HTTP/1.1 + h2, limits, draining.
//! - [`api`]: the HTTP surfaces — the router and request frame, then apps
//!   ([`api::citizens`]), admins ([`api::admin`]), auditors ([`api::auditor`]),
//!   ops; problem documents.
//! - [`audit`]: events, hash chain, journal with group commit, its frame format and
//!   its directory (locked, owner-only, scanned), checkpoints, shipper, verifier
//!   (anchors, every column), journal inspect and salvage, the enriched record.
//! - [`warehouse`]: PostgreSQL and every SQL statement: embedded cluster, migrations,
//!   pool (TLS with rustls), policy store, deliveries, queries;
//!   [`warehouse::WarehouseError`].
//! - [`sim`]: the national population DB simulator; [`sim::idp`] the demo identity provider.
//! - [`units`]: Vietnam's administrative units (2025).
//! - [`clock`]: the wall clock of holds and reports, Vietnam's time zone.
//! - [`client`]: the HTTPS client of the `admin` and `audit` commands.
//! - [`cli`]: the `popgate admin` and `popgate audit` commands.
//! - [`console`]: the web console of policy admins and auditors: sign-in by
//!   OpenID Connect, server-side sessions, pages over the admin and audit surfaces.
//! - [`demo`]: `popgate demo`, everything on embedded defaults.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod console;
pub mod demo;
pub mod gateway;
pub mod limits;
pub mod metrics;
pub mod personal_id;
pub mod policy;
pub mod server;
pub mod sim;
pub mod telemetry;
pub mod tls;
pub mod units;
pub mod upstream;
pub mod warehouse;
