//! Certificate revocation lists for the apps CA: loaded (and refused when
//! stale) with the TLS configuration, enforced by rustls at the handshake,
//! and checked again on every request, so that a certificate revoked by a
//! reloaded CRL is refused at once even on a keep-alive connection that was
//! opened before. The certificate is parsed once, when its connection is
//! accepted ([`CertId`]); a request's check is a set lookup.

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

/// The revoked certificates of the loaded CRLs.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    revoked: HashSet<CertId>,
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
                revocations.revoked.insert(CertId {
                    issuer: issuer.clone(),
                    serial: revoked.raw_serial().to_vec(),
                });
            }
            ders.push(der);
        }
    }
    Ok((ders, revocations))
}

/// What a CRL names a certificate by: its issuer (DER) and serial number.
/// Read once per connection, so that a request costs a set lookup rather
/// than parsing the certificate again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertId {
    issuer: Vec<u8>,
    serial: Vec<u8>,
}

impl CertId {
    /// `None` when the certificate does not parse.
    pub fn of(cert: &CertificateDer<'_>) -> Option<CertId> {
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref()).ok()?;
        Some(CertId {
            issuer: parsed.issuer().as_raw().to_vec(),
            serial: parsed.raw_serial().to_vec(),
        })
    }
}

impl Revocations {
    /// Checks a (chain-verified) client certificate, by the identity read
    /// from it when its connection was accepted; `None` (it did not parse)
    /// is refused.
    pub fn check_id(&self, id: Option<&CertId>) -> Result<(), RevocationError> {
        self.check_id_at(id, OffsetDateTime::now_utc())
    }

    fn check_id_at(&self, id: Option<&CertId>, now: OffsetDateTime) -> Result<(), RevocationError> {
        if self.next_update.is_some_and(|n| n <= now) {
            return Err(RevocationError::Stale);
        }
        if self.revoked.is_empty() {
            return Ok(());
        }
        match id {
            Some(id) if !self.revoked.contains(id) => Ok(()),
            _ => Err(RevocationError::Revoked),
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
