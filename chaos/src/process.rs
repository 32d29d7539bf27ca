//! One child process of a chaos run (a `parley node` or `parley gateway`):
//! starting it with its output appended to a log, signalling it, and
//! stopping it.
//!
//! Signals go only to a child this tool started and has not reaped yet, so
//! its pid cannot belong to any other process. Each child runs in its own
//! process group (a terminal's Ctrl-C reaches only the tool), dies with
//! SIGKILL if the tool's spawning thread dies (Linux), and gets SIGKILL when
//! its handle is dropped.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::{Child, Command};

/// How long a child may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of a log that an error shows.
const LOG_TAIL_LINES: usize = 12;

/// A running child and the log its output goes to.
pub struct ChildProcess {
    name: String,
    log_path: PathBuf,
    child: Child,
}

impl ChildProcess {
    /// Starts `executable` with `args` and the extra environment `env`,
    /// appending stdout and stderr to `log_path` after a line naming the
    /// start.
    pub fn spawn(
        executable: &Path,
        name: &str,
        args: &[String],
        env: &[(&str, &OsStr)],
        log_path: &Path,
    ) -> Result<ChildProcess> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("failed to open the log file {}", log_path.display()))?;
        writeln!(log, "--- parley-chaos started {name}: {}", args.join(" "))
            .with_context(|| format!("failed to write the log file {}", log_path.display()))?;

        let mut command = Command::new(executable);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .process_group(0)
            .kill_on_drop(true);
        set_parent_death_signal(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {name} ({})", executable.display()))?;
        tracing::debug!(name, pid = child.id(), log = %log_path.display(), "started");
        Ok(ChildProcess {
            name: name.to_string(),
            log_path: log_path.to_path_buf(),
            child,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Returns the exit status if the child has exited, reaping it.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` unless the child has exited.
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.exited().is_some() {
            return;
        }
        let Some(pid) = self.child.id() else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions. The pid is our
        // own child that has not been reaped (try_wait returned None), so
        // it cannot have been reused by another process.
        let result = unsafe { libc::kill(pid as libc::pid_t, signal) };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            tracing::warn!(name = self.name, pid, signal, %error, "failed to send a signal");
        }
    }

    /// Sends SIGKILL and waits for the child to exit.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        if let Err(error) = self.child.wait().await {
            tracing::warn!(name = self.name, %error, "failed to wait for a killed child");
        }
    }

    /// Sends SIGCONT (a stopped child cannot handle SIGTERM) and SIGTERM,
    /// then waits for the exit, with SIGKILL after `STOP_TIMEOUT`. Returns
    /// false when SIGKILL was needed.
    pub async fn terminate(&mut self) -> bool {
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => {
                tracing::debug!(name = self.name, %status, "stopped");
                true
            }
            Ok(Err(error)) => {
                tracing::warn!(name = self.name, %error, "failed to wait for exit");
                true
            }
            Err(_) => {
                tracing::warn!(
                    name = self.name,
                    log = %self.log_path.display(),
                    timeout_secs = STOP_TIMEOUT.as_secs(),
                    "no exit after SIGTERM; sending SIGKILL"
                );
                self.kill().await;
                false
            }
        }
    }

    /// Returns the last lines of the child's log, indented.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }
}

/// Asks the kernel to send SIGKILL to the child when the thread that
/// started it dies, so a killed chaos run leaves no nodes behind. SIGKILL
/// also ends a child stopped by SIGSTOP.
#[cfg(target_os = "linux")]
fn set_parent_death_signal(command: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls
    // only prctl and getppid, which are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::other(
                    "parley-chaos exited during the start",
                ));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_command: &mut Command) {}

/// Returns the last lines of a log file, indented, or why it cannot.
pub fn log_tail(path: &Path) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) => return format!("  (cannot read {}: {error})", path.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..]
        .iter()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_last_lines() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("node1.log");
        let text: String = (1..=20).map(|line| format!("line {line}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path);
        assert!(tail.starts_with("  line 9"), "{tail}");
        assert!(tail.ends_with("  line 20"), "{tail}");
    }

    #[tokio::test]
    async fn stopped_child_terminates() {
        let directory = tempfile::tempdir().unwrap();
        let log = directory.path().join("sleep.log");
        let mut child =
            ChildProcess::spawn(Path::new("sleep"), "sleep", &["30".into()], &[], &log).unwrap();
        child.signal(libc::SIGSTOP);
        child.terminate().await;
        assert!(child.exited().is_some());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.starts_with("--- parley-chaos started sleep: 30"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn signal_after_exit_is_ignored() {
        let directory = tempfile::tempdir().unwrap();
        let log = directory.path().join("true.log");
        let mut child = ChildProcess::spawn(Path::new("true"), "true", &[], &[], &log).unwrap();
        child.child.wait().await.unwrap();
        child.signal(libc::SIGKILL);
        assert!(child.exited().is_some());
    }
}
