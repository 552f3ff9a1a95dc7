//! What the command line does differently on Linux, macOS and Windows, in
//! one place: how relive is asked to stop, whether `--signal` exists, and
//! on Windows the job object that holds the program run by `--exec`.
//!
//! - Linux: everything. `--exec` runs the program in a process group, relive
//!   is its subreaper (`PR_SET_CHILD_SUBREAPER`), the kernel kills it if relive
//!   is killed (`PR_SET_PDEATHSIG`), and as PID 1 relive reaps every orphan
//!   ([`crate::reap`]).
//! - macOS (and other Unixes): process groups, `kill(2)` and `--signal` work as
//!   on Linux. The three Linux-only parts are missing: no subreaper (what the
//!   program double-forks is reparented to launchd, not to relive, and is not
//!   stopped at a restart), no parent-death signal (a relive killed with
//!   SIGKILL leaves its program running), no PID 1 reaping.
//! - Windows: no signals and no process groups in the Unix sense. `--exec`
//!   restarts only (`--signal` is refused when the arguments are parsed); the
//!   program runs in a job object, so that a restart ends its whole process
//!   tree and relive's death, however it dies, ends the job (see [`Job`]).
//!   relive stops on Ctrl-C and Ctrl-Break.

use std::io;

/// The kinds of system whose differences matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    /// Linux: subreaper, parent-death signal, PID 1 reaping.
    Linux,
    /// macOS and the other Unixes: process groups and signals only.
    Unix,
    /// Windows: restart only, through a job object.
    Windows,
}

/// The system relive was built for.
pub const OS: Os = if cfg!(target_os = "linux") {
    Os::Linux
} else if cfg!(windows) {
    Os::Windows
} else {
    Os::Unix
};

/// Why `--signal` cannot be used on `os`, if it cannot: the error that
/// argument parsing shows.
pub fn signal_unavailable(os: Os) -> Option<&'static str> {
    match os {
        Os::Linux | Os::Unix => None,
        // A console program on Windows has no signal to reload on (only
        // Ctrl-C and Ctrl-Break, which mean "stop"), so there is nothing
        // `--signal` could send.
        Os::Windows => Some("--signal is not available on Windows: the child is restarted"),
    }
}

/// What asked relive to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT, or Ctrl-C / Ctrl-Break on Windows.
    Interrupt,
    /// SIGTERM, or relive itself decided to end (its engine stopped).
    Terminate,
}

/// The requests to stop relive: SIGINT and SIGTERM on Unix, Ctrl-C and
/// Ctrl-Break on Windows. Installed before the work starts, so that a
/// request that comes early is not lost (nor ends relive without cleanup).
pub struct Shutdown {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    ctrl_break: tokio::signal::windows::CtrlBreak,
}

impl Shutdown {
    /// Starts listening; needs a tokio runtime.
    pub fn listen() -> io::Result<Shutdown> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Shutdown { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
        }
        #[cfg(windows)]
        {
            use tokio::signal::windows::{ctrl_break, ctrl_c};
            Ok(Shutdown { ctrl_c: ctrl_c()?, ctrl_break: ctrl_break()? })
        }
    }

    /// Waits for the next request to stop.
    pub async fn recv(&mut self) -> Stop {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => Stop::Interrupt,
                _ = self.terminate.recv() => Stop::Terminate,
            }
        }
        #[cfg(windows)]
        {
            tokio::select! {
                _ = self.ctrl_c.recv() => Stop::Interrupt,
                _ = self.ctrl_break.recv() => Stop::Interrupt,
            }
        }
    }
}

#[cfg(windows)]
pub use job::Job;

/// A Windows job object: the program run by `--exec` and every process it
/// starts, ended together.
///
/// Why a job object rather than `taskkill /T /F`: taskkill finds the tree by
/// parent process ids at the moment it runs, so a process whose parent has
/// already exited (a launcher that starts the real server and returns) is not
/// found and outlives the restart. A job holds every process started inside
/// it whatever happened to its parent, `TerminateJobObject` ends them all,
/// and with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE` the system ends them when
/// relive's handle closes, also when relive is killed: the Windows
/// counterpart of Linux's parent-death signal, and more (it reaches the
/// whole tree). windows-sys is already in relive's dependency graph (tokio,
/// mio), so this costs no new crate.
///
/// The program is put in the job right after it is created, not created
/// suspended (std gives no handle to its first thread to resume it): a
/// process it starts in the first instants, before it is in the job, is
/// outside it. Its loader runs for far longer than that window.
#[cfg(windows)]
mod job {
    #![allow(unsafe_code)]

    use std::io;
    use std::os::windows::io::AsRawHandle;

    use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
    use windows_sys::Win32::System::Console::{CTRL_BREAK_EVENT, GenerateConsoleCtrlEvent};
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
        JOBOBJECT_BASIC_ACCOUNTING_INFORMATION, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
        JobObjectBasicAccountingInformation, JobObjectExtendedLimitInformation, QueryInformationJobObject,
        SetInformationJobObject, TerminateJobObject,
    };

    /// The flag for `CreationFlags`: the program leads a console process
    /// group of its own, which is what Ctrl-Break can be sent to without
    /// reaching relive too.
    pub const NEW_PROCESS_GROUP: u32 = windows_sys::Win32::System::Threading::CREATE_NEW_PROCESS_GROUP;

    /// An owned job object handle; the job's processes end when it closes.
    pub struct Job {
        handle: HANDLE,
    }

    // SAFETY: a job handle is a kernel object handle, usable from any
    // thread; `Job` owns it and closes it once.
    unsafe impl Send for Job {}
    unsafe impl Sync for Job {}

    impl Job {
        /// A new job whose processes end when it is dropped.
        pub fn new() -> io::Result<Job> {
            // SAFETY: null attributes and name are allowed (an unnamed job
            // with default security); the handle is checked before use.
            let handle = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
            if handle.is_null() {
                return Err(io::Error::last_os_error());
            }
            let job = Job { handle };
            let mut limits = JOBOBJECT_EXTENDED_LIMIT_INFORMATION::default();
            limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
            // SAFETY: a pointer to a live, initialised struct of the class's
            // type, with its size.
            let ok = unsafe {
                SetInformationJobObject(
                    job.handle,
                    JobObjectExtendedLimitInformation,
                    (&raw const limits).cast(),
                    size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
                )
            };
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(job)
        }

        /// Puts `child` (and so whatever it starts from now on) in the job.
        pub fn assign(&self, child: &std::process::Child) -> io::Result<()> {
            // SAFETY: both handles are live: the job's is owned by `self`,
            // the process's by `child`, borrowed for the call.
            let ok = unsafe { AssignProcessToJobObject(self.handle, child.as_raw_handle() as HANDLE) };
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        /// How many processes of the job are still running.
        pub fn active(&self) -> io::Result<u32> {
            let mut info = JOBOBJECT_BASIC_ACCOUNTING_INFORMATION::default();
            // SAFETY: a pointer to a live struct of the class's type, with
            // its size; the returned length is not asked for.
            let ok = unsafe {
                QueryInformationJobObject(
                    self.handle,
                    JobObjectBasicAccountingInformation,
                    (&raw mut info).cast(),
                    size_of::<JOBOBJECT_BASIC_ACCOUNTING_INFORMATION>() as u32,
                    std::ptr::null_mut(),
                )
            };
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(info.ActiveProcesses)
        }

        /// Ends every process of the job at once (exit code 1).
        pub fn terminate(&self) -> io::Result<()> {
            // SAFETY: the job's handle, owned by `self`.
            if unsafe { TerminateJobObject(self.handle, 1) } == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }

    impl Drop for Job {
        fn drop(&mut self) {
            // SAFETY: the handle is owned by `self` and closed only here.
            unsafe {
                CloseHandle(self.handle);
            }
        }
    }

    /// Sends Ctrl-Break to the console process group led by `pid` (started
    /// with [`NEW_PROCESS_GROUP`]): the polite request to stop, which a
    /// console program can handle, before the job is terminated. It reaches
    /// only programs that share relive's console.
    pub fn ctrl_break(pid: u32) -> io::Result<()> {
        // SAFETY: integer arguments only.
        if unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(windows)]
pub use job::{NEW_PROCESS_GROUP, ctrl_break};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_is_refused_on_windows_only() {
        assert_eq!(
            signal_unavailable(Os::Windows),
            Some("--signal is not available on Windows: the child is restarted")
        );
        assert_eq!(signal_unavailable(Os::Linux), None);
        assert_eq!(signal_unavailable(Os::Unix), None);
    }

    #[test]
    fn this_build_knows_its_system() {
        assert_eq!(OS == Os::Linux, cfg!(target_os = "linux"));
        assert_eq!(OS == Os::Windows, cfg!(windows));
    }
}
