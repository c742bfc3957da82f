//! Signed policy versions. When a version becomes active (approved by a
//! second admin, imported into an empty store, or frozen in an emergency),
//! the instance that activates it signs its number, the digest of its
//! files, its author, approver, reason and predecessor with its audit key.
//! Every instance checks that signature against the keys it trusts before
//! it applies a version, so a row written straight into the database —
//! with any author and approver it likes — changes nothing.

use sha2::{Digest, Sha256};

use super::PolicyFiles;
use crate::audit::checkpoint::{load_trusted_keys, verify_bytes, Signer, TrustedKeys};

/// A version as the store holds it, with what vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    pub version: u64,
    pub files: PolicyFiles,
    pub author: String,
    pub approver: Option<String>,
    pub reason: String,
    pub based_on: Option<u64>,
    pub emergency: bool,
    pub signature: Option<VersionSignature>,
}

/// Who signed a version, and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSignature {
    /// The instance that activated the version.
    pub instance: String,
    /// Its public key (base64).
    pub public_key: String,
    pub signature: String,
}

/// SHA-256 (hex) of a version's files (their JSON, keys in order).
pub fn digest(files: &PolicyFiles) -> String {
    let json = serde_json::to_vec(files).unwrap_or_default();
    Sha256::digest(&json).iter().map(|b| format!("{b:02x}")).collect()
}

/// The signed bytes: every fact of the version, each delimited.
fn message(v: &StoredVersion, instance: &str) -> Vec<u8> {
    let mut m = b"popgate-policy-v1\0".to_vec();
    m.extend_from_slice(instance.as_bytes());
    m.push(0);
    m.extend_from_slice(&v.version.to_be_bytes());
    m.extend_from_slice(digest(&v.files).as_bytes());
    for part in [
        v.author.as_str(),
        v.approver.as_deref().unwrap_or(""),
        v.reason.as_str(),
    ] {
        m.push(0);
        m.extend_from_slice(part.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&v.based_on.unwrap_or(0).to_be_bytes());
    m.push(u8::from(v.emergency));
    m
}

/// `v` signed by `instance` with `signer`.
pub fn sign(v: &StoredVersion, instance: &str, signer: &Signer) -> VersionSignature {
    VersionSignature {
        instance: instance.to_owned(),
        public_key: signer.public_key(),
        signature: signer.sign_bytes(&message(v, instance)),
    }
}

/// Whether `v`'s signature matches its content under the key it names
/// (who that key belongs to is the caller's question).
pub fn signature_matches(v: &StoredVersion) -> bool {
    v.signature
        .as_ref()
        .is_some_and(|sig| verify_bytes(&sig.public_key, &message(v, &sig.instance), &sig.signature))
}

/// The keys an instance trusts for policy versions: its own, and those of
/// the other instances (the file `audit.trusted_keys`, `"*"` for any
/// instance), read again when a version names a key not yet trusted — so a
/// new instance's key is added without a restart.
#[derive(Debug, Default)]
pub struct PolicyTrust {
    pub own_instance: String,
    pub own_key: String,
    pub others_file: Option<std::path::PathBuf>,
    others: std::sync::RwLock<Option<TrustedKeys>>,
}

impl PolicyTrust {
    /// This instance's key, and the others' from `others_file`.
    pub fn new(
        own_instance: &str,
        own_key: String,
        others_file: Option<&std::path::Path>,
    ) -> anyhow::Result<PolicyTrust> {
        let others = others_file.map(load_trusted_keys).transpose()?;
        Ok(PolicyTrust {
            own_instance: own_instance.to_owned(),
            own_key,
            others_file: others_file.map(std::path::Path::to_path_buf),
            others: std::sync::RwLock::new(others),
        })
    }

    fn trusted_now(&self, instance: &str, key: &str) -> bool {
        (instance == self.own_instance && key == self.own_key)
            || self.others.read().is_ok_and(|others| {
                others.as_ref().is_some_and(|t| {
                    t.get(instance)
                        .into_iter()
                        .chain(t.get("*"))
                        .flatten()
                        .any(|k| k == key)
                })
            })
    }

    fn trusts(&self, instance: &str, key: &str) -> bool {
        if self.trusted_now(instance, key) {
            return true;
        }
        let Some(file) = &self.others_file else {
            return false;
        };
        match load_trusted_keys(file) {
            Ok(keys) => {
                if let Ok(mut others) = self.others.write() {
                    *others = Some(keys);
                }
                self.trusted_now(instance, key)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot re-read the trusted keys");
                false
            }
        }
    }

    /// Why `v` may not be applied, if it may not.
    pub fn refusal(&self, v: &StoredVersion) -> Option<String> {
        let Some(sig) = &v.signature else {
            return Some(format!("policy version {} is not signed", v.version));
        };
        if !self.trusts(&sig.instance, &sig.public_key) {
            return Some(format!(
                "policy version {} is signed by a key this instance does not trust",
                v.version
            ));
        }
        if !verify_bytes(&sig.public_key, &message(v, &sig.instance), &sig.signature) {
            return Some(format!(
                "policy version {}'s signature does not match its content (files, author, approver, reason or predecessor changed)",
                v.version
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_every_fact_and_needs_a_trusted_key() {
        let signer = Signer::generate().expect("key");
        let files: PolicyFiles = [("fields.toml".to_owned(), "x".to_owned())].into();
        let mut v = StoredVersion {
            version: 2,
            files,
            author: "an".into(),
            approver: Some("binh".into()),
            reason: "r".into(),
            based_on: Some(1),
            emergency: false,
            signature: None,
        };
        let trust = PolicyTrust::new("gw-1", signer.public_key(), None).expect("trust");
        assert!(trust.refusal(&v).is_some_and(|r| r.contains("not signed")));
        v.signature = Some(sign(&v, "gw-1", &signer));
        assert_eq!(trust.refusal(&v), None);
        for changed in [
            StoredVersion {
                approver: Some("an".into()),
                ..v.clone()
            },
            StoredVersion {
                version: 3,
                ..v.clone()
            },
            StoredVersion {
                based_on: None,
                ..v.clone()
            },
            StoredVersion {
                emergency: true,
                ..v.clone()
            },
            StoredVersion {
                files: PolicyFiles::new(),
                ..v.clone()
            },
        ] {
            assert!(trust.refusal(&changed).is_some(), "{changed:?}");
        }
        let stranger = Signer::generate().expect("key");
        let forged = StoredVersion {
            signature: Some(sign(&v, "gw-1", &stranger)),
            ..v.clone()
        };
        assert!(trust
            .refusal(&forged)
            .is_some_and(|r| r.contains("does not trust")));
    }
}
