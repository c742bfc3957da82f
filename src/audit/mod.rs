//! Audit that cannot be lost or silently rewritten.
//!
//! Every request that reaches a decision produces an [`event::AuditEvent`];
//! events form one hash chain per instance ([`event`]), are made durable in
//! a local [`journal`] (its format [`frame`], its directory [`segments`])
//! before any answer is released, are anchored by signed [`checkpoint`]s,
//! and are shipped to the warehouse by [`shipper`]. The [`verify`] module
//! recomputes chains and checkpoints from the warehouse and holds them
//! against anchors; [`salvage`] is what an operator does with a damaged
//! journal.
//! A granted lookup also yields a [`record::WarehouseRecord`], the enriched
//! copy the warehouse keeps.
//!
//! This module never stores a personal ID: citizens appear only as keyed
//! pseudonyms.

pub mod alerts;
pub mod bundle;
pub mod checkpoint;
pub mod event;
pub mod frame;
pub mod journal;
pub mod record;
pub mod report;
pub mod salvage;
pub mod segments;
pub mod shipper;
pub mod verify;

pub use record::{age_band, WarehouseRecord};
