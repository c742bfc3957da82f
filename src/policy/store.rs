//! The active policy snapshot of this instance, and the one function that
//! changes it. Every request loads the snapshot once and is judged by it to
//! the end; a new version is parsed whole, numbered, and swapped in with a
//! single store, so no request ever sees half of a change.
//!
//! Nothing else in popgate writes the snapshot: the gateway's start-up, the
//! follower of the warehouse's active version and the admin surface all
//! call [`PolicyStore::activate`].

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{parse, PolicyFiles, PolicySet, Problems};

/// The active policy set, shared by every surface of one gateway.
pub struct PolicyStore {
    active: ArcSwap<PolicySet>,
    province: u16,
}

impl PolicyStore {
    /// A store whose first snapshot is `files` as version `version`.
    pub fn new(files: &PolicyFiles, province: u16, version: u64) -> Result<PolicyStore, Problems> {
        let set = parse_version(files, province, version)?;
        Ok(PolicyStore {
            active: ArcSwap::from_pointee(set),
            province,
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

    /// Parses `files` as version `version` and makes it the active snapshot.
    /// An invalid set is refused and the active snapshot stays.
    pub fn activate(&self, files: &PolicyFiles, version: u64) -> Result<(), Problems> {
        let set = parse_version(files, self.province, version)?;
        self.active.store(Arc::new(set));
        tracing::info!(version, "policy version active on this instance");
        Ok(())
    }
}

fn parse_version(files: &PolicyFiles, province: u16, version: u64) -> Result<PolicySet, Problems> {
    let mut set = parse(files, province)?;
    set.version = version;
    Ok(set)
}
