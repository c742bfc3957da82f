//! The development PKI made by `popgate certs init`: two CAs (the province's
//! apps CA and a stand-in for the national database's CA), the leaf
//! certificates that hang off them, the audit signing key and the pseudonym
//! key. Production deployments replace every file with ones from their own
//! CAs and key management; the layout is in `certs/README.md`.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::RngCore;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use time::{Duration, OffsetDateTime};

/// The sample apps of `policies/` plus the admin and audit clients.
pub const SAMPLE_APPS: &[&str] = &["mot-cua", "ioc", "y-te", "dia-chi-so", "admin-cli", "audit-cli"];

/// The URI SAN that names an app in its client certificate.
pub fn app_uri(app: &str) -> String {
    format!("urn:popgate:app:{app}")
}

/// The demo identity provider: issuer, audience and key id of its tokens.
pub const DEMO_TOKEN_ISSUER: &str = "urn:popgate:demo-idp";
pub const DEMO_TOKEN_AUDIENCE: &str = "urn:popgate:gateway";
pub const DEMO_TOKEN_KID: &str = "demo-idp-1";

const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 397;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0} already holds a PKI; pass --force to replace it")]
    Exists(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("cannot read {path}: {why}")]
    Read { path: String, why: String },
}

/// File names inside a PKI directory.
#[derive(Debug, Clone)]
pub struct PkiLayout {
    pub dir: PathBuf,
}

impl PkiLayout {
    pub fn new(dir: impl Into<PathBuf>) -> PkiLayout {
        PkiLayout { dir: dir.into() }
    }
    /// The apps CA's private key: kept by the development PKI only (0600),
    /// so that `certs issue` and `certs revoke` can sign.
    pub fn apps_ca_key(&self) -> PathBuf {
        self.dir.join("apps-ca.key")
    }
    /// The apps CA's revocation list, which the demo's gateway loads.
    pub fn apps_crl(&self) -> PathBuf {
        self.dir.join("apps-ca.crl")
    }
    /// The serial numbers (hex) the apps CA has revoked.
    pub fn apps_revoked(&self) -> PathBuf {
        self.dir.join("apps-ca-revoked.json")
    }
    pub fn apps_ca_cert(&self) -> PathBuf {
        self.dir.join("apps-ca.pem")
    }
    pub fn gateway_cert(&self) -> PathBuf {
        self.dir.join("gateway.pem")
    }
    pub fn gateway_key(&self) -> PathBuf {
        self.dir.join("gateway.key")
    }
    pub fn app_cert(&self, app: &str) -> PathBuf {
        self.dir.join("apps").join(format!("{app}.pem"))
    }
    pub fn app_key(&self, app: &str) -> PathBuf {
        self.dir.join("apps").join(format!("{app}.key"))
    }
    pub fn national_ca_cert(&self) -> PathBuf {
        self.dir.join("national-ca.pem")
    }
    pub fn sim_cert(&self) -> PathBuf {
        self.dir.join("sim.pem")
    }
    pub fn sim_key(&self) -> PathBuf {
        self.dir.join("sim.key")
    }
    pub fn upstream_client_cert(&self) -> PathBuf {
        self.dir.join("upstream-client.pem")
    }
    pub fn upstream_client_key(&self) -> PathBuf {
        self.dir.join("upstream-client.key")
    }
    pub fn audit_signing_key(&self) -> PathBuf {
        self.dir.join("audit-signing.key")
    }
    pub fn pseudonym_key(&self) -> PathBuf {
        self.dir.join("pseudonym.key")
    }
    /// The demo identity provider's ES256 signing key.
    pub fn idp_key(&self) -> PathBuf {
        self.dir.join("idp.key")
    }
    /// The demo identity provider's public keys, as a JWK set.
    pub fn jwks(&self) -> PathBuf {
        self.dir.join("jwks.json")
    }
    /// True when a previous `certs init` completed here.
    pub fn is_complete(&self) -> bool {
        [
            self.apps_ca_cert(),
            self.gateway_cert(),
            self.national_ca_cert(),
            self.upstream_client_cert(),
            self.pseudonym_key(),
            self.jwks(),
        ]
        .iter()
        .all(|p| p.exists())
    }
}

/// A certificate authority held in memory while certificates are issued.
pub struct Authority {
    cert: Certificate,
    key: KeyPair,
}

impl Authority {
    /// The CA kept in `cert` and `key` (PEM).
    pub fn load(cert: &Path, key: &Path) -> Result<Authority, PkiError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| PkiError::Read {
                path: path.display().to_string(),
                why: e.to_string(),
            })
        };
        let bad = |path: &Path, e: rcgen::Error| PkiError::Read {
            path: path.display().to_string(),
            why: e.to_string(),
        };
        let key_pair = KeyPair::from_pem(&read(key)?).map_err(|e| bad(key, e))?;
        let params = CertificateParams::from_ca_cert_pem(&read(cert)?).map_err(|e| bad(cert, e))?;
        let cert = params.self_signed(&key_pair)?;
        Ok(Authority { cert, key: key_pair })
    }

    pub fn new(common_name: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        Ok(Authority { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A TLS server certificate for loopback use.
    pub fn issue_server(&self, common_name: &str) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A TLS client certificate; `uri` becomes a URI SAN when given.
    pub fn issue_client(&self, common_name: &str, uri: Option<&str>) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// Signs `params` exactly as given (validity, usages and all): for tests
    /// of certificates that must be refused.
    pub fn issue_as_is(&self, params: CertificateParams) -> Result<Issued, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CRL (PEM) revoking the certificates with these serial numbers.
    pub fn crl(
        &self,
        revoked_serials: &[Vec<u8>],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String, PkiError> {
        let params = rcgen::CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: rcgen::SerialNumber::from(1 + revoked_serials.len() as u64),
            issuing_distribution_point: None,
            revoked_certs: revoked_serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(s),
                    revocation_time: this_update,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.cert, &self.key)?.pem()?)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<Issued, PkiError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, LEAF_VALIDITY_DAYS);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `cert` (world-readable) and `key` (owner-only).
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), PkiError> {
        write_file(cert, self.cert_pem.as_bytes(), 0o644)?;
        write_file(key, self.key_pem.as_bytes(), 0o600)
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "VN");
    dn.push(DnType::OrganizationName, "popgate development PKI");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)
}

/// What `certs init` made, with the CAs kept so tests can issue more.
pub struct DevPki {
    pub layout: PkiLayout,
    pub apps_ca: Authority,
    pub national_ca: Authority,
}

/// Creates the whole development PKI in `dir`.
pub fn init(dir: &Path, apps: &[&str], force: bool) -> Result<DevPki, PkiError> {
    let layout = PkiLayout::new(dir);
    if layout.is_complete() && !force {
        return Err(PkiError::Exists(dir.display().to_string()));
    }
    let apps_ca = Authority::new("popgate provincial apps CA (development)")?;
    write_file(&layout.apps_ca_cert(), apps_ca.cert_pem().as_bytes(), 0o644)?;
    // Development only: the CA key stays, so that the demo can issue and
    // revoke app certificates; a production CA keeps its key elsewhere.
    write_file(
        &layout.apps_ca_key(),
        apps_ca.key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_crl(&layout, &apps_ca, &[])?;
    apps_ca
        .issue_server("popgate gateway")?
        .write(&layout.gateway_cert(), &layout.gateway_key())?;
    for app in apps {
        apps_ca
            .issue_client(app, Some(&app_uri(app)))?
            .write(&layout.app_cert(app), &layout.app_key(app))?;
    }

    let national_ca = Authority::new("national population database CA (simulated)")?;
    write_file(
        &layout.national_ca_cert(),
        national_ca.cert_pem().as_bytes(),
        0o644,
    )?;
    national_ca
        .issue_server("national population database simulator")?
        .write(&layout.sim_cert(), &layout.sim_key())?;
    national_ca
        .issue_client("province upstream client", None)?
        .write(&layout.upstream_client_cert(), &layout.upstream_client_key())?;

    let signing = KeyPair::generate_for(&PKCS_ED25519)?;
    write_file(
        &layout.audit_signing_key(),
        signing.serialize_pem().as_bytes(),
        0o600,
    )?;
    let idp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    write_file(&layout.idp_key(), idp.serialize_pem().as_bytes(), 0o600)?;
    let jwks = crate::auth::token::es256_jwks(DEMO_TOKEN_KID, idp.public_key_raw());
    write_file(&layout.jwks(), jwks.to_string().as_bytes(), 0o644)?;

    let mut pseudonym = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut pseudonym);
    let hex = crate::audit::event::hex(&pseudonym);
    write_file(&layout.pseudonym_key(), format!("{hex}\n").as_bytes(), 0o600)?;
    Ok(DevPki {
        layout,
        apps_ca,
        national_ca,
    })
}

/// How long a development CRL is valid.
const CRL_VALIDITY_DAYS: i64 = 365;

/// Writes the apps CA's CRL revoking `serials`, atomically (a gateway
/// watching the file never reads half of it), and the list of serials.
fn write_crl(layout: &PkiLayout, ca: &Authority, serials: &[Vec<u8>]) -> Result<(), PkiError> {
    let now = OffsetDateTime::now_utc();
    let crl = ca.crl(
        serials,
        now - Duration::minutes(5),
        now + Duration::days(CRL_VALIDITY_DAYS),
    )?;
    let hex: Vec<String> = serials.iter().map(|s| crate::audit::event::hex(s)).collect();
    write_file(
        &layout.apps_revoked(),
        serde_json::to_string(&hex).unwrap_or_default().as_bytes(),
        0o644,
    )?;
    let tmp = layout.apps_crl().with_extension("crl.tmp");
    write_file(&tmp, crl.as_bytes(), 0o644)?;
    std::fs::rename(&tmp, layout.apps_crl()).map_err(|source| PkiError::Write {
        path: layout.apps_crl().display().to_string(),
        source,
    })
}

/// The apps CA of a development PKI, which keeps its key.
fn apps_ca_of(layout: &PkiLayout) -> Result<Authority, PkiError> {
    if !layout.apps_ca_key().exists() {
        return Err(PkiError::Read {
            path: layout.apps_ca_key().display().to_string(),
            why: "this PKI keeps no CA key (it was made before `certs issue` and `certs revoke` existed); \
                  make a new one with `certs init --force`"
                .to_owned(),
        });
    }
    Authority::load(&layout.apps_ca_cert(), &layout.apps_ca_key())
}

/// Issues a new client certificate for `app` (replacing its files).
pub fn issue_app(layout: &PkiLayout, app: &str) -> Result<(), PkiError> {
    let ca = apps_ca_of(layout)?;
    ca.issue_client(app, Some(&app_uri(app)))?
        .write(&layout.app_cert(app), &layout.app_key(app))
}

/// Revokes `app`'s current certificate: its serial joins the CRL, which a
/// running gateway that loads the CRL picks up. Returns the serial (hex).
pub fn revoke_app(layout: &PkiLayout, app: &str) -> Result<String, PkiError> {
    let ca = apps_ca_of(layout)?;
    let path = layout.app_cert(app);
    let unreadable = |why: String| PkiError::Read {
        path: path.display().to_string(),
        why,
    };
    let certs = crate::tls::load_certs(&path).map_err(|e| unreadable(e.to_string()))?;
    let first = certs
        .first()
        .ok_or_else(|| unreadable("no certificate in the file".into()))?;
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(first.as_ref())
        .map_err(|e| unreadable(e.to_string()))?;
    let serial = parsed.raw_serial().to_vec();
    let mut serials: Vec<Vec<u8>> = std::fs::read_to_string(layout.apps_revoked())
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<String>>(&t).ok())
        .unwrap_or_default()
        .iter()
        .filter_map(|h| crate::audit::event::unhex(h))
        .collect();
    if !serials.contains(&serial) {
        serials.push(serial.clone());
    }
    write_crl(layout, &ca, &serials)?;
    Ok(crate::audit::event::hex(&serial))
}

/// A token from the demo identity provider of `layout` for an officer of
/// `app`, bound to the app's certificate in `layout`.
pub fn mint_demo_token(
    layout: &PkiLayout,
    app: &str,
    officer: &str,
    roles: &[String],
    unit: Option<u32>,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    use anyhow::Context;
    let cert = crate::tls::load_certs(&layout.app_cert(app))
        .with_context(|| format!("no certificate for app '{app}' in {}", layout.dir.display()))?;
    let key =
        fs::read(layout.idp_key()).with_context(|| format!("cannot read {}", layout.idp_key().display()))?;
    let now = jsonwebtoken::get_current_timestamp();
    let claims = crate::auth::token::MintClaims {
        iss: DEMO_TOKEN_ISSUER.to_owned(),
        aud: DEMO_TOKEN_AUDIENCE.to_owned(),
        sub: officer.to_owned(),
        azp: app.to_owned(),
        roles: roles.to_vec(),
        unit: unit.map(|u| format!("{u:05}")),
        iat: now,
        nbf: now,
        exp: now + ttl_secs,
        cnf: crate::auth::token::Confirmation {
            x5t_s256: Some(crate::auth::token::certificate_thumbprint(&cert[0])),
        },
    };
    crate::auth::token::mint(&key, DEMO_TOKEN_KID, &claims)
}
