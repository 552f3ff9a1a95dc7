//! relive-fleet: many instances of a service, one configuration, through
//! etcd.
//!
//! This first part is the [`layout`] of a fleet's keys in etcd.

#![deny(missing_docs)]

pub mod layout;

pub use layout::{Layout, State, Status};
