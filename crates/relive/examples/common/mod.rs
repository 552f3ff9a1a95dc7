//! What the benchmarks share: one clock for two processes, and a writer in
//! another process (the bench binary run again with `--writer ...`), so
//! that changes are made the way editors and deploy tools make them.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// Any error, sendable across threads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for the bench and its writer
/// process.
#[cfg(unix)]
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Elsewhere (Windows, where the benchmarks are type-checked, not run) the
/// wall clock: shared by both processes too, but a clock step during a run
/// would distort its figures.
#[cfg(not(unix))]
pub fn mono_ns() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    since.as_nanos() as u64
}

/// This binary run again as a writer, driven a line at a time over its
/// stdin and stdout. Killed on drop.
pub struct WriterProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl WriterProcess {
    /// Starts `<this binary> --writer ARGS`.
    pub fn spawn<I, S>(args: I) -> Result<WriterProcess, BoxError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--writer")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(WriterProcess { child, stdin, stdout })
    }

    /// Sends `line`; returns the writer's answer, trimmed.
    pub fn ask(&mut self, line: &str) -> Result<String, BoxError> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut answer = String::new();
        if self.stdout.read_line(&mut answer)? == 0 {
            return Err("the writer process ended".into());
        }
        Ok(answer.trim().to_string())
    }
}

impl Drop for WriterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
