//! What the ops listener reports about the running gateway: whether the
//! listener and a policy are ready, and the last known state of the
//! upstream. Updated by the request path, read by `/readyz`.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::upstream::{Answered, UpstreamError};

// 0 (the default) means unknown: no upstream call yet.
const UP: u8 = 1;
const FAILING: u8 = 2;

#[derive(Debug, Default)]
pub struct GatewayStatus {
    listening: AtomicBool,
    upstream: AtomicU8,
}

impl GatewayStatus {
    pub fn set_listening(&self, on: bool) {
        self.listening.store(on, Ordering::Release);
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// A "not found" is a healthy answer; failures and timeouts are not.
    pub fn record_upstream(&self, result: &Result<Answered, UpstreamError>) {
        let state = match result {
            Ok(_) | Err(UpstreamError::NotFound) => UP,
            Err(_) => FAILING,
        };
        self.upstream.store(state, Ordering::Relaxed);
    }

    pub fn upstream_state(&self) -> &'static str {
        match self.upstream.load(Ordering::Relaxed) {
            UP => "up",
            FAILING => "failing",
            _ => "unknown",
        }
    }
}
