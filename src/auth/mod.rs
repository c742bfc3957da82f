//! Who is calling: the app, from the URI SANs of its verified client
//! certificate, matched against the app registry of the active policy.
//!
//! rustls has already verified the chain to the apps CA by the time a
//! request arrives; this module only reads the identity out of it.

pub mod secret;
pub mod token;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The URI SANs of a DER certificate (empty when it has none or cannot be
/// parsed, which then matches no app).
pub fn certificate_uris(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::pki::{app_uri, Authority};
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn reads_the_app_uri_from_an_issued_certificate() {
        let ca = Authority::new("test CA").expect("ca");
        let issued = ca
            .issue_client("mot-cua", Some(&app_uri("mot-cua")))
            .expect("cert");
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
        assert_eq!(certificate_uris(&der), vec!["urn:popgate:app:mot-cua".to_owned()]);
        let bare = ca.issue_client("nobody", None).expect("cert");
        let der = CertificateDer::from_pem_slice(bare.cert_pem.as_bytes()).expect("pem");
        assert!(certificate_uris(&der).is_empty());
    }
}
