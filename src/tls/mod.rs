//! TLS for every listener and client: loading PEM certificates and keys,
//! the gateway's server config (client certificate required from the apps
//! CA), the simulator's server config (client certificate from the national
//! CA), and the upstream client config (the province's certificate).
//!
//! The crypto provider is chosen once here (`ring`) so that no other module
//! depends on which one is compiled in.

pub mod https_client;
pub mod pki;
pub mod revocation;

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

/// The process-wide crypto provider: aws-lc-rs, offering the hybrid
/// post-quantum key exchange X25519MLKEM768 first (citizen data recorded in
/// transit today must stay secret once quantum computers can break X25519
/// alone), then X25519 and P-256 for peers without it. The cipher suites are
/// the provider's own: AEAD with forward secrecy only.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: key_exchange_groups(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

/// The key exchange groups offered, preferred first.
pub fn key_exchange_groups() -> Vec<&'static dyn rustls::crypto::SupportedKxGroup> {
    use rustls::crypto::aws_lc_rs::kx_group;
    vec![kx_group::X25519MLKEM768, kx_group::X25519, kx_group::SECP256R1]
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
    /// Revocation lists of the client CA, enforced at the handshake.
    pub crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
}

/// A server config that refuses any client without a certificate chaining
/// to `client_ca`.
pub fn mutual_server_config(files: &MutualServerFiles<'_>) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let roots = Arc::new(load_roots(files.client_ca)?);
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if !files.crls.is_empty() {
        builder = builder
            .with_crls(files.crls.clone())
            .enforce_revocation_expiration();
    }
    let verifier = builder.build().map_err(|e| TlsError::Verifier(e.to_string()))?;
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

/// A server config for people's browsers (the console, the demo identity
/// provider): TLS 1.3 and 1.2, HTTP/1.1 and h2; client certificates are
/// required only when `client_ca` is given.
pub fn browser_server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider)
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = ALPN_H2_H1.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client config trusting only `ca`, presenting no certificate.
pub fn server_auth_client_config(ca: &Path) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(load_roots(ca)?)
        .with_no_client_auth())
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

/// What a listener serves with: the config for each new connection and
/// the revocation lists checked on each request, built from the same files
/// and swapped together.
#[derive(Debug)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub revocations: revocation::Revocations,
}

/// The snapshot a listener reads for each connection and request.
pub type ActiveServerTls = Arc<arc_swap::ArcSwap<ServerTls>>;

/// The gateway's server TLS, reloadable: one [`ServerTls`] snapshot,
/// swapped whole on reload (SIGHUP or a file change). A reload that fails
/// (unreadable file, stale CRL) keeps what is active.
pub struct ReloadableServerTls {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    client_ca: std::path::PathBuf,
    crl_files: Vec<std::path::PathBuf>,
    allow_tls12: bool,
    pub active: ActiveServerTls,
    seen: std::sync::Mutex<Vec<Option<std::time::SystemTime>>>,
}

impl ReloadableServerTls {
    pub fn load(
        cert: &Path,
        key: &Path,
        client_ca: &Path,
        crl_files: &[std::path::PathBuf],
        allow_tls12: bool,
    ) -> anyhow::Result<ReloadableServerTls> {
        let mut files = vec![cert, key, client_ca];
        files.extend(crl_files.iter().map(|p| p.as_path()));
        let stamp = revocation::mtimes(&files);
        let tls = build_server_tls(cert, key, client_ca, crl_files, allow_tls12)?;
        Ok(ReloadableServerTls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            client_ca: client_ca.to_owned(),
            crl_files: crl_files.to_vec(),
            allow_tls12,
            active: Arc::new(arc_swap::ArcSwap::from_pointee(tls)),
            seen: std::sync::Mutex::new(stamp),
        })
    }

    fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.cert.as_path(), self.key.as_path(), self.client_ca.as_path()];
        files.extend(self.crl_files.iter().map(|p| p.as_path()));
        files
    }

    /// Rebuilds everything from the files and swaps it in.
    pub fn reload(&self) -> anyhow::Result<()> {
        let stamp = revocation::mtimes(&self.files());
        let tls = build_server_tls(
            &self.cert,
            &self.key,
            &self.client_ca,
            &self.crl_files,
            self.allow_tls12,
        )?;
        self.active.store(Arc::new(tls));
        if let Ok(mut seen) = self.seen.lock() {
            *seen = stamp;
        }
        Ok(())
    }

    /// Reloads when any file changed since the last load; returns whether it did.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let now = revocation::mtimes(&self.files());
        let changed = self.seen.lock().map(|seen| *seen != now).unwrap_or(true);
        if changed {
            self.reload()?;
        }
        Ok(changed)
    }
}

fn build_server_tls(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    crl_files: &[std::path::PathBuf],
    allow_tls12: bool,
) -> anyhow::Result<ServerTls> {
    let (crls, revocations) = revocation::load_crls(crl_files)?;
    let config = mutual_server_config(&MutualServerFiles {
        cert,
        key,
        client_ca,
        allow_tls12,
        alpn: ALPN_H2_H1,
        crls,
    })?;
    Ok(ServerTls {
        config: Arc::new(config),
        revocations,
    })
}

/// A TLS config that never changes and revokes nothing, in the form
/// listeners take.
pub fn fixed(config: ServerConfig) -> ActiveServerTls {
    Arc::new(arc_swap::ArcSwap::from_pointee(ServerTls {
        config: Arc::new(config),
        revocations: revocation::Revocations::default(),
    }))
}
