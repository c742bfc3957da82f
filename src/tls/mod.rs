//! TLS for every listener and client: loading PEM certificates and keys,
//! the gateway's server config (client certificate required from the apps
//! CA), the simulator's server config (client certificate from the national
//! CA), and the upstream client config (the province's certificate).
//!
//! The crypto provider is chosen once here (`ring`) so that no other module
//! depends on which one is compiled in.

pub mod pki;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be built; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {source}")]
    Certs {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} contains no certificate")]
    NoCerts { path: String },
    #[error("cannot read the private key from {path}: {source}")]
    Key {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the CA certificate in {path} is not usable: {source}")]
    Ca { path: String, source: rustls::Error },
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The process-wide crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certs {
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCerts {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Key {
        path: path.display().to_string(),
        source,
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsError::Ca {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(roots)
}

/// Files that make up a server identity that requires client certificates.
#[derive(Debug, Clone)]
pub struct MutualServerFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub client_ca: &'a Path,
    /// Also accept TLS 1.2 (ECDHE + AEAD suites only); TLS 1.3 otherwise.
    pub allow_tls12: bool,
    pub alpn: &'a [&'a [u8]],
}

/// A server config that refuses any client without a certificate chaining
/// to `client_ca`.
pub fn mutual_server_config(files: &MutualServerFiles<'_>) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let roots = Arc::new(load_roots(files.client_ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if files.allow_tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(files.cert)?, load_key(files.key)?)?;
    config.alpn_protocols = files.alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client config trusting only `ca` and presenting `cert`/`key`.
pub fn mutual_client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(load_roots(ca)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// ALPN identifiers offered by our HTTP servers, preferred first.
pub const ALPN_H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
