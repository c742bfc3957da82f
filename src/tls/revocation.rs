//! Certificate revocation lists for the apps CA: loaded (and refused when
//! stale) with the TLS configuration, enforced by rustls at the handshake,
//! and checked again on every request, so that a certificate revoked by a
//! reloaded CRL is refused at once even on a keep-alive connection that was
//! opened before.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("cannot read the CRL {path}: {why}")]
    Read { path: String, why: String },
    #[error("the CRL {path} is stale (its next update was due {next_update}); refusing it")]
    Stale { path: String, next_update: String },
}

/// Why a presented certificate is not acceptable now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    #[error("the client certificate has been revoked")]
    Revoked,
    #[error("the revocation list is out of date, so no certificate can be trusted")]
    Stale,
}

/// The revoked (issuer, serial) pairs of the loaded CRLs.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    revoked: HashSet<(Vec<u8>, Vec<u8>)>,
    /// The earliest `nextUpdate` of the loaded CRLs.
    next_update: Option<OffsetDateTime>,
}

/// Loads CRL files (PEM), refusing any that is stale now.
pub fn load_crls(
    paths: &[PathBuf],
) -> Result<(Vec<CertificateRevocationListDer<'static>>, Revocations), CrlError> {
    let mut ders = Vec::new();
    let mut revocations = Revocations::default();
    let now = OffsetDateTime::now_utc();
    for path in paths {
        let read_err = |why: String| CrlError::Read {
            path: path.display().to_string(),
            why,
        };
        let list: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_file_iter(path)
                .and_then(|it| it.collect())
                .map_err(|e| read_err(e.to_string()))?;
        if list.is_empty() {
            return Err(read_err("no CRL in the file".into()));
        }
        for der in list {
            let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref())
                .map_err(|e| read_err(e.to_string()))?;
            let next = crl.next_update().map(|t| t.to_datetime());
            match next {
                Some(n) if n <= now => {
                    return Err(CrlError::Stale {
                        path: path.display().to_string(),
                        next_update: n.to_string(),
                    })
                }
                Some(n) => revocations.next_update = Some(revocations.next_update.map_or(n, |e| e.min(n))),
                None => {}
            }
            let issuer = crl.issuer().as_raw().to_vec();
            for revoked in crl.iter_revoked_certificates() {
                revocations
                    .revoked
                    .insert((issuer.clone(), revoked.raw_serial().to_vec()));
            }
            ders.push(der);
        }
    }
    Ok((ders, revocations))
}

impl Revocations {
    /// Checks a (chain-verified) client certificate against the lists.
    pub fn check(&self, cert: &CertificateDer<'_>) -> Result<(), RevocationError> {
        self.check_at(cert, OffsetDateTime::now_utc())
    }

    pub fn check_at(&self, cert: &CertificateDer<'_>, now: OffsetDateTime) -> Result<(), RevocationError> {
        if self.next_update.is_some_and(|n| n <= now) {
            return Err(RevocationError::Stale);
        }
        if self.revoked.is_empty() {
            return Ok(());
        }
        let Ok((_, parsed)) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref()) else {
            return Err(RevocationError::Revoked);
        };
        let key = (parsed.issuer().as_raw().to_vec(), parsed.raw_serial().to_vec());
        if self.revoked.contains(&key) {
            Err(RevocationError::Revoked)
        } else {
            Ok(())
        }
    }

    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }
}

/// Modification times of files, to notice when any of them changes.
pub fn mtimes(paths: &[&Path]) -> Vec<Option<std::time::SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}
