//! Signed checkpoints of an instance's chain head (Ed25519).
//!
//! Signed message: `"popgate-checkpoint-v1" ‖ 0x00 ‖ instance_id ‖ 0x00 ‖
//! seq (u64 big-endian) ‖ head_hash (64 hex characters) ‖ 0x00 ‖ ts`.
//! A checkpoint cannot be moved to another instance, position or head
//! without breaking its signature.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde::{Deserialize, Serialize};

const DOMAIN: &[u8] = b"popgate-checkpoint-v1\0";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub instance_id: String,
    pub seq: u64,
    pub head_hash: String,
    pub ts: String,
    /// The signer's public key, base64 (32 raw bytes).
    pub public_key: String,
    /// Ed25519 signature, base64.
    pub signature: String,
}

fn message(instance_id: &str, seq: u64, head_hash: &str, ts: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + instance_id.len() + 80 + ts.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(instance_id.as_bytes());
    m.push(0);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head_hash.as_bytes());
    m.push(0);
    m.extend_from_slice(ts.as_bytes());
    m
}

/// Public keys trusted per instance (`"*"` for any instance), base64.
pub type TrustedKeys = HashMap<String, Vec<String>>;

/// The keys `trusted` pins for `instance` (its own and those for `"*"`).
pub fn pinned_for<'a>(trusted: &'a TrustedKeys, instance: &str) -> Vec<&'a str> {
    trusted
        .get(instance)
        .into_iter()
        .chain(trusted.get("*"))
        .flatten()
        .map(String::as_str)
        .collect()
}

/// Reads a trusted-keys file: JSON `{"INSTANCE": ["BASE64KEY", ...]}`.
pub fn load_trusted_keys(path: &std::path::Path) -> anyhow::Result<TrustedKeys> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} must be {{\"instance\": [\"base64 key\", ...]}}",
            path.display()
        )
    })
}

/// The instance's signing key.
pub struct Signer {
    key: Ed25519KeyPair,
}

impl Signer {
    /// Loads an Ed25519 PKCS#8 PEM key (what `certs init` writes).
    pub fn from_file(path: &Path) -> anyhow::Result<Signer> {
        let der = PrivateKeyDer::from_pem_file(path)
            .with_context(|| format!("cannot read the audit signing key {}", path.display()))?;
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_der())
            .map_err(|_| anyhow::anyhow!("{} is not an Ed25519 PKCS#8 key", path.display()))?;
        Ok(Signer { key })
    }

    /// A throwaway key, for tests.
    pub fn generate() -> anyhow::Result<Signer> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("key generation failed"))?;
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow::anyhow!("bad key"))?;
        Ok(Signer { key })
    }

    pub fn public_key(&self) -> String {
        STANDARD.encode(self.key.public_key().as_ref())
    }

    /// The signature (base64) of `message`.
    pub fn sign_bytes(&self, message: &[u8]) -> String {
        STANDARD.encode(self.key.sign(message).as_ref())
    }

    pub fn sign(&self, instance_id: &str, seq: u64, head_hash: &str, ts: &str) -> Checkpoint {
        let sig = self.key.sign(&message(instance_id, seq, head_hash, ts));
        Checkpoint {
            instance_id: instance_id.to_owned(),
            seq,
            head_hash: head_hash.to_owned(),
            ts: ts.to_owned(),
            public_key: self.public_key(),
            signature: STANDARD.encode(sig.as_ref()),
        }
    }
}

/// Whether `signature` (base64) is `public_key`'s (base64) over `message`.
pub fn verify_bytes(public_key: &str, message: &[u8], signature: &str) -> bool {
    let (Ok(pk), Ok(sig)) = (STANDARD.decode(public_key), STANDARD.decode(signature)) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, pk).verify(message, &sig).is_ok()
}

impl Checkpoint {
    /// Whether the signature is valid under `public_key` (base64).
    pub fn verify_with(&self, public_key: &str) -> bool {
        let (Ok(pk), Ok(sig)) = (STANDARD.decode(public_key), STANDARD.decode(&self.signature)) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, pk)
            .verify(
                &message(&self.instance_id, self.seq, &self.head_hash, &self.ts),
                &sig,
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_every_part() {
        let signer = Signer::generate().expect("key");
        let cp = signer.sign("gw-1", 42, &"ab".repeat(32), "2026-11-27T00:00:00.000000Z");
        assert!(cp.verify_with(&signer.public_key()));
        for tampered in [
            Checkpoint {
                seq: 43,
                ..cp.clone()
            },
            Checkpoint {
                instance_id: "gw-2".into(),
                ..cp.clone()
            },
            Checkpoint {
                head_hash: "cd".repeat(32),
                ..cp.clone()
            },
            Checkpoint {
                ts: "2026-11-28T00:00:00.000000Z".into(),
                ..cp.clone()
            },
        ] {
            assert!(!tampered.verify_with(&signer.public_key()));
        }
        let other = Signer::generate().expect("key");
        assert!(!cp.verify_with(&other.public_key()));
    }

    #[test]
    fn loads_the_key_certs_init_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = crate::tls::pki::init(dir.path(), &[], false).expect("pki");
        let signer = Signer::from_file(&pki.layout.audit_signing_key()).expect("signer");
        let cp = signer.sign("x", 1, "00", "t");
        assert!(cp.verify_with(&signer.public_key()));
    }
}
