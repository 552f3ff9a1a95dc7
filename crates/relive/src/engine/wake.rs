//! Waking the engine thread: commands from handles, and events that the
//! portable backend's own thread received. On Unix a pipe, so that the
//! engine can wait in one `poll(2)` for a wake-up and the inotify
//! descriptor; elsewhere a condition variable.

use std::io;
use std::time::Duration;

#[cfg(not(unix))]
pub(crate) use self::condvar::{Waker, Wakeup, pair};
#[cfg(unix)]
pub(crate) use self::pipe::{Waker, Wakeup, pair};

#[cfg(unix)]
mod pipe {
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::sync::Arc;

    use rustix::event::{PollFd, PollFlags};

    use super::{Duration, io};

    /// Wakes the engine; cheap to clone, any thread.
    #[derive(Clone)]
    pub(crate) struct Waker(Arc<OwnedFd>);

    /// The engine's side: waits for a wake-up.
    pub(crate) struct Wakeup(OwnedFd);

    pub(crate) fn pair() -> io::Result<(Waker, Wakeup)> {
        let (rx, tx) = nonblocking_pipe()?;
        Ok((Waker(Arc::new(tx)), Wakeup(rx)))
    }

    #[cfg(not(target_vendor = "apple"))]
    fn nonblocking_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK)?)
    }

    /// macOS has no `pipe2`: the flags are set right after `pipe`. A thread
    /// of the program that forks and execs in that instant leaks the two
    /// ends into its child; harmless, the pipe only wakes the engine.
    #[cfg(target_vendor = "apple")]
    fn nonblocking_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        let (rx, tx) = rustix::pipe::pipe()?;
        for fd in [&rx, &tx] {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
            rustix::fs::fcntl_setfl(fd, rustix::fs::OFlags::NONBLOCK)?;
        }
        Ok((rx, tx))
    }

    impl Waker {
        pub(crate) fn wake(&self) {
            // A full pipe already wakes the engine; any other error means
            // it is gone.
            let _ = rustix::io::write(&*self.0, &[1]);
        }
    }

    impl Wakeup {
        /// Sleeps until a wake-up, `fd` readable, or `timeout`.
        pub(crate) fn wait(&self, timeout: Option<Duration>, fd: Option<BorrowedFd<'_>>) {
            let timespec = timeout.map(|t| {
                rustix::event::Timespec::try_from(t)
                    .unwrap_or(rustix::event::Timespec { tv_sec: i64::MAX / 2, tv_nsec: 0 })
            });
            let mut fds = Vec::with_capacity(2);
            fds.push(PollFd::new(&self.0, PollFlags::IN));
            if let Some(fd) = fd {
                fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
            }
            // EINTR and friends just mean "look again".
            let _ = rustix::event::poll(&mut fds, timespec.as_ref());
        }

        /// Forgets the wake-ups so far.
        pub(crate) fn drain(&self) {
            let mut buf = [0u8; 64];
            while matches!(rustix::io::read(self.0.as_fd(), &mut buf), Ok(n) if n > 0) {}
        }
    }
}

#[cfg(not(unix))]
mod condvar {
    use std::sync::{Arc, Condvar, Mutex};

    use super::{Duration, io};

    #[derive(Default)]
    struct Shared {
        woken: Mutex<bool>,
        cond: Condvar,
    }

    /// Wakes the engine; cheap to clone, any thread.
    #[derive(Clone)]
    pub(crate) struct Waker(Arc<Shared>);

    /// The engine's side: waits for a wake-up.
    pub(crate) struct Wakeup(Arc<Shared>);

    pub(crate) fn pair() -> io::Result<(Waker, Wakeup)> {
        let shared = Arc::new(Shared::default());
        Ok((Waker(Arc::clone(&shared)), Wakeup(shared)))
    }

    impl Waker {
        pub(crate) fn wake(&self) {
            *self.0.woken.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.0.cond.notify_one();
        }
    }

    impl Wakeup {
        /// Sleeps until a wake-up or `timeout`. There is no descriptor to
        /// wait on here: only inotify (Linux) has one.
        pub(crate) fn wait(&self, timeout: Option<Duration>) {
            let woken = self.0.woken.lock().unwrap_or_else(|e| e.into_inner());
            match timeout {
                Some(t) => drop(self.0.cond.wait_timeout_while(woken, t, |w| !*w)),
                None => drop(self.0.cond.wait_while(woken, |w| !*w)),
            }
        }

        /// Forgets the wake-ups so far.
        pub(crate) fn drain(&self) {
            *self.0.woken.lock().unwrap_or_else(|e| e.into_inner()) = false;
        }
    }
}
