//! The child processes of `parley dev`: starting one with its output
//! appended to a log file, waiting for the first to exit, and stopping all
//! of them with SIGTERM (then SIGKILL after a timeout).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::process::{Child, Command};

/// How long a child may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of a failed child's log that the error shows.
const LOG_TAIL_LINES: usize = 8;

/// A child process and the log its output goes to.
pub struct ChildProcess {
    name: String,
    log_path: PathBuf,
    child: Child,
}

impl ChildProcess {
    pub fn spawn(
        executable: &Path,
        name: &str,
        args: &[String],
        log_path: PathBuf,
    ) -> Result<ChildProcess> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("failed to open the log file {}", log_path.display()))?;
        let started = chrono::DateTime::from_timestamp_millis(unix_ms()).unwrap_or_default();
        writeln!(
            log,
            "--- parley dev started {name} at {started}: {}",
            args.join(" ")
        )
        .with_context(|| format!("failed to write the log file {}", log_path.display()))?;

        let mut command = Command::new(executable);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("NO_COLOR", "1")
            .process_group(0)
            .kill_on_drop(true);
        set_parent_death_signal(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {name} ({})", executable.display()))?;
        tracing::info!(name, pid = child.id(), log = %log_path.display(), "started");
        Ok(ChildProcess {
            name: name.to_string(),
            log_path,
            child,
        })
    }

    pub fn exit_error(&self, status: std::io::Result<ExitStatus>) -> anyhow::Error {
        let status = match status {
            Ok(status) => status.to_string(),
            Err(error) => format!("wait failed: {error}"),
        };
        anyhow::anyhow!(
            "{} exited unexpectedly ({status}); its log is {}. Last lines:\n{}",
            self.name,
            self.log_path.display(),
            log_tail(&self.log_path)
        )
    }

    /// Sends SIGTERM unless the child has already exited.
    fn terminate(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let Some(pid) = self.child.id() else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions. The pid is our
        // own child that has not been reaped (try_wait returned None), so
        // it cannot have been reused by another process.
        let result = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            tracing::warn!(name = self.name, pid, %error, "failed to send SIGTERM");
        }
    }

    /// Waits for the child to exit, with SIGKILL after `STOP_TIMEOUT`.
    async fn wait_stopped(&mut self) {
        let status = match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(
                    name = self.name,
                    log = %self.log_path.display(),
                    "did not exit within {} s of SIGTERM; sending SIGKILL",
                    STOP_TIMEOUT.as_secs()
                );
                let _ = self.child.start_kill();
                self.child.wait().await
            }
        };
        match status {
            Ok(status) => tracing::info!(name = self.name, %status, "stopped"),
            Err(error) => tracing::warn!(name = self.name, %error, "failed to wait for exit"),
        }
    }
}

/// Asks the kernel to send SIGTERM to the child when this process dies,
/// so a killed `parley dev` leaves no orphaned nodes holding its ports.
#[cfg(target_os = "linux")]
fn set_parent_death_signal(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and calls
    // only prctl and getppid, which are async-signal-safe.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("parley dev exited during the start"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_command: &mut Command) {}

/// Waits for the first child to exit; returns its index and status.
pub async fn first_exit(children: &mut [ChildProcess]) -> (usize, std::io::Result<ExitStatus>) {
    let waits = children
        .iter_mut()
        .map(|child| Box::pin(child.child.wait()));
    let (status, index, _) = futures::future::select_all(waits).await;
    (index, status)
}

/// Stops the gateway first, so it logs no errors about nodes going away,
/// then the nodes.
pub async fn stop_all(children: &mut [ChildProcess]) {
    let (nodes, gateway) = children.split_at_mut(children.len() - 1);
    for child in gateway.iter_mut() {
        child.terminate();
        child.wait_stopped().await;
    }
    for child in nodes.iter_mut() {
        child.terminate();
    }
    for child in nodes.iter_mut() {
        child.wait_stopped().await;
    }
}

/// Returns the last lines of a log file, indented, or why it can't.
fn log_tail(path: &Path) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) => return format!("  (cannot read it: {error})"),
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..]
        .iter()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
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
        assert!(tail.starts_with("  line 13"), "{tail}");
        assert!(tail.ends_with("  line 20"), "{tail}");
    }
}
