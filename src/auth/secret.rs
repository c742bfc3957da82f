//! Secrets made and compared here: random URL-safe values (session ids,
//! CSRF tokens, OAuth state, nonces, PKCE verifiers, codes, passwords of
//! the demo's private servers), and comparison in time that does not
//! depend on where two values differ.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

/// A random URL-safe string of 32 bytes.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Equal, in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
