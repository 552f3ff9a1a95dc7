//! The crate's only unsafe code: read leases, which tell whether anyone has a
//! file open for writing.
//!
//! Why: the kernel makes some writes visible before it queues their inotify
//! event. `open(O_TRUNC)` empties a file and only then queues `IN_MODIFY`,
//! so a reader that trusts the event queue alone can read a file that a
//! writer has just emptied. A read lease closes that gap exactly. The kernel
//! counts a writer from inside its `open(2)`, before the truncation, and
//! refuses a read lease (`EAGAIN`) while any writer has the file open
//! (`fs/locks.c`, `check_conflicting_open`). While we hold the lease, a new
//! writer's `open(2)` waits until we release it, which we do as soon as the
//! read is done.
//!
//! No safe wrapper exists (neither rustix nor nix expose `F_SETLEASE`), so
//! this module calls `fcntl(2)` through libc. Every call passes a file
//! descriptor borrowed from a live `File` and integer arguments; none takes
//! a pointer.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `F_SETSIG` from `<asm-generic/fcntl.h>`, which the libc crate does not
/// export for every Linux target.
const F_SETSIG: libc::c_int = 10;

/// What a lease attempt found.
pub(crate) enum Lease<'a> {
    /// Nobody has the file open for writing, and nobody can open it for
    /// writing until this is dropped.
    Held(Held<'a>),
    /// Somebody has the file open for writing.
    Busy,
    /// Leases are not available here (not the file's owner and no
    /// `CAP_LEASE`, a network filesystem, leases disabled).
    Unsupported,
}

/// A held read lease, released on drop.
pub(crate) struct Held<'a> {
    file: &'a File,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // SAFETY: `fcntl` with F_SETLEASE and an integer argument on a
        // descriptor owned by a `File` that outlives `self`.
        unsafe {
            libc::fcntl(self.file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK);
        }
    }
}

/// Tries to take a read lease on `file`, which must be open read-only.
pub(crate) fn read_lease(file: &File) -> Lease<'_> {
    let fd = file.as_raw_fd();
    // A lease break signals the lease holder, SIGIO by default, whose
    // default action ends the process. We hold the lease for microseconds
    // and never need the notice, so the signal is set to SIGURG (ignored by
    // default) before the lease exists and the owner cleared right after,
    // which stops the kernel from sending anything at all.
    //
    // SAFETY: `fcntl` with integer arguments on a descriptor owned by a
    // `File` that is borrowed for the lifetime of the result.
    unsafe {
        if libc::fcntl(fd, F_SETSIG, libc::SIGURG) == -1 {
            return Lease::Unsupported;
        }
        if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == -1 {
            return match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) => Lease::Busy,
                _ => Lease::Unsupported,
            };
        }
        libc::fcntl(fd, libc::F_SETOWN, 0);
    }
    Lease::Held(Held { file })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_lease_is_refused_while_a_writer_has_the_file_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();

        let reader = File::open(&path).unwrap();
        assert!(matches!(read_lease(&reader), Lease::Held(_)), "no writer: the lease is granted");

        let mut writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let reader = File::open(&path).unwrap();
        assert!(matches!(read_lease(&reader), Lease::Busy), "a writer is open");
        writer.write_all(b"y").unwrap();
        drop(writer);

        let reader = File::open(&path).unwrap();
        match read_lease(&reader) {
            Lease::Held(held) => {
                // While held, a writer's open would block; releasing it lets
                // writers in again.
                drop(held);
                std::fs::write(&path, "z").unwrap();
            }
            _ => panic!("the writer closed: the lease is granted"),
        }
    }
}
