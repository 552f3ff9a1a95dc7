//! Files that secret references (`${file:PATH}`) read, wherever they are:
//! inside the workspace or not, a Kubernetes Secret mounted with its
//! `..data` symlink swap or a plain file.
//!
//! They are checked by metadata (`stat`, following symlinks: a `..data`
//! swap changes the inode) every [`INTERVAL`], only while some config
//! references a file. A change reloads every config that references the
//! file, through the same validation as any change. Polling a few paths
//! costs a few system calls per interval, and needs no watch outside the
//! workspace; a Secret's own update delay is a minute or more.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::watch::Meta;

/// How often referenced files are looked at.
pub(super) const INTERVAL: Duration = Duration::from_millis(250);

/// What a referenced file looked like: its metadata, or that it was
/// missing (its absence is a state too: its return is a change).
type Seen = Option<Meta>;

#[derive(Default)]
pub(super) struct References {
    /// File → what it looked like, and the configs that reference it.
    files: BTreeMap<PathBuf, (Seen, BTreeSet<String>)>,
    next: Option<Instant>,
}

impl References {
    /// Config `name` now references exactly `files`.
    pub fn set(&mut self, name: &str, files: &[PathBuf], now: Instant) {
        for (path, (_, configs)) in self.files.iter_mut() {
            if !files.contains(path) {
                configs.remove(name);
            }
        }
        for file in files {
            let entry = self.files.entry(file.clone()).or_insert_with(|| (look(file), BTreeSet::new()));
            entry.1.insert(name.to_string());
        }
        self.files.retain(|_, (_, configs)| !configs.is_empty());
        self.next = match (self.files.is_empty(), self.next) {
            (true, _) => None,
            (false, Some(next)) => Some(next),
            (false, None) => Some(now + INTERVAL),
        };
    }

    /// When to look next, if any file is referenced.
    pub fn next_check(&self) -> Option<Instant> {
        self.next
    }

    /// If a look is due: the configs whose referenced files changed.
    pub fn check(&mut self, now: Instant) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        if self.next.is_none_or(|next| next > now) {
            return changed;
        }
        self.next = Some(now + INTERVAL);
        for (path, (seen, configs)) in self.files.iter_mut() {
            let current = look(path);
            if current != *seen {
                *seen = current;
                changed.extend(configs.iter().cloned());
            }
        }
        changed
    }
}

fn look(path: &Path) -> Seen {
    std::fs::metadata(path).ok().map(|m| Meta::of(&m))
}
