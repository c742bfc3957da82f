//! The active policy snapshot of this instance, and the one function that
//! changes it. Every request loads the snapshot once and is judged by it to
//! the end; a new version is checked (its signature, against the keys this
//! instance trusts), parsed whole, numbered, and swapped in with a single
//! store, so no request ever sees half of a change — and a version written
//! into the database by anyone but an instance that approved it is refused,
//! the last good one staying.
//!
//! Nothing else in popgate writes the snapshot: the gateway's start-up, the
//! follower of the warehouse's active version and the admin surface all
//! call [`PolicyStore::activate`].

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::signature::{PolicyTrust, StoredVersion};
use super::{parse, PolicySet};

/// The active policy set, shared by every surface of one gateway.
pub struct PolicyStore {
    active: ArcSwap<PolicySet>,
    province: u16,
    trust: PolicyTrust,
    /// The last version refused, and why (for `/readyz` and the log).
    refused: Mutex<Option<(u64, String)>>,
    refusals: std::sync::atomic::AtomicU64,
}

impl PolicyStore {
    /// A store whose first snapshot is `version`, if it is signed by a
    /// trusted key and valid.
    pub fn new(version: &StoredVersion, province: u16, trust: PolicyTrust) -> Result<PolicyStore, String> {
        if let Some(why) = trust.refusal(version) {
            return Err(why);
        }
        let set = parse_version(version, province)?;
        Ok(PolicyStore {
            active: ArcSwap::from_pointee(set),
            province,
            trust,
            refused: Mutex::new(None),
            refusals: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The snapshot a request is judged by, for the whole request.
    pub fn snapshot(&self) -> Arc<PolicySet> {
        self.active.load_full()
    }

    /// The active version number (cheap; for gauges and comparisons).
    pub fn version(&self) -> u64 {
        self.active.load().version
    }

    /// The province whose jurisdiction `province` grants mean.
    pub fn province(&self) -> u16 {
        self.province
    }

    /// Checks `version` and makes it the active snapshot. A version that is
    /// unsigned, signed by an untrusted key, altered since it was signed, or
    /// invalid is refused, and the active snapshot stays.
    pub fn activate(&self, version: &StoredVersion) -> Result<(), String> {
        let checked = match self.trust.refusal(version) {
            Some(why) => Err(why),
            None => parse_version(version, self.province),
        };
        match checked {
            Ok(set) => {
                self.active.store(Arc::new(set));
                if let Ok(mut refused) = self.refused.lock() {
                    refused.take_if(|(v, _)| *v <= version.version);
                }
                tracing::info!(
                    version = version.version,
                    "policy version active on this instance"
                );
                Ok(())
            }
            Err(why) => {
                let first = self.refused.lock().map_or(true, |mut r| {
                    let first = r.as_ref().is_none_or(|(v, _)| *v != version.version);
                    *r = Some((version.version, why.clone()));
                    first
                });
                if first {
                    self.refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(version = version.version, reason = %why, active = self.version(), "policy version refused; the active version stays");
                }
                Err(why)
            }
        }
    }

    /// Why `version` would be refused, if it would.
    pub fn refusal_of(&self, version: &StoredVersion) -> Option<String> {
        self.trust.refusal(version)
    }

    /// The last version refused since the active one, and why.
    pub fn refused(&self) -> Option<(u64, String)> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }

    /// How many versions were refused.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn parse_version(version: &StoredVersion, province: u16) -> Result<PolicySet, String> {
    let mut set = parse(&version.files, province)
        .map_err(|p| format!("policy version {} is invalid:\n{p}", version.version))?;
    set.version = version.version;
    Ok(set)
}
