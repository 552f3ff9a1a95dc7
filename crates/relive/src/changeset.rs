//! Change sets: the versions of several configs applied as one.
//!
//! Every step of the engine that commits values (a batch of file changes,
//! a settled base + overlay or group, a released [`Hold`](crate::Hold), a
//! [`publish_set`](crate::HotReloadManager::publish_set)) is one change
//! set with one [`ChangeSetId`]. The configs' `ConfigChanged` events of a
//! set come one after the other, followed by one
//! [`ChangeEvent::ChangeSetApplied`](crate::ChangeEvent::ChangeSetApplied)
//! that names them all; the history records the id with each version (a
//! version refused in a step with the id of the set it was tried in; a
//! save that changed nothing live with none).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The identity of one change set: unique within a workspace, across
/// restarts, and increasing in the order sets were applied.
///
/// It is the wall-clock time the set was made, in nanoseconds since the
/// Unix epoch, made strictly greater than the last id of this process. Two
/// processes (or a clock stepped back) could in principle meet on one
/// value; one engine per workspace makes that moot in practice. Shown and
/// parsed as 16 hexadecimal digits (`0181f4c2d3e4a5b6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangeSetId(u64);

/// The last id made by this process.
static LAST: AtomicU64 = AtomicU64::new(0);

impl ChangeSetId {
    /// A new id, greater than every id this process made before.
    pub(crate) fn next() -> ChangeSetId {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let prev = LAST
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + 1)))
            .expect("the update always succeeds");
        ChangeSetId(now.max(prev + 1))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The id with this number (as read back from a history record).
    pub fn from_u64(n: u64) -> ChangeSetId {
        ChangeSetId(n)
    }
}

impl fmt::Display for ChangeSetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A change-set id that is not 1 to 16 hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseChangeSetIdError(String);

impl fmt::Display for ParseChangeSetIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a change-set id (1 to 16 hexadecimal digits): {:?}", self.0)
    }
}

impl std::error::Error for ParseChangeSetIdError {}

impl FromStr for ChangeSetId {
    type Err = ParseChangeSetIdError;

    fn from_str(s: &str) -> Result<ChangeSetId, ParseChangeSetIdError> {
        let shown: String = s.chars().take(40).collect();
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseChangeSetIdError(shown));
        }
        u64::from_str_radix(s, 16).map(ChangeSetId).map_err(|_| ParseChangeSetIdError(shown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_strictly_and_round_trip_as_hex() {
        let ids: Vec<ChangeSetId> = (0..1000).map(|_| ChangeSetId::next()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        for id in &ids[..10] {
            let shown = id.to_string();
            assert_eq!(shown.len(), 16);
            assert_eq!(shown.parse::<ChangeSetId>().unwrap(), *id);
        }
        assert!("".parse::<ChangeSetId>().is_err());
        assert!("12345678901234567".parse::<ChangeSetId>().is_err());
        assert!("+1".parse::<ChangeSetId>().is_err());
        assert!("xyz".parse::<ChangeSetId>().is_err());
    }
}
