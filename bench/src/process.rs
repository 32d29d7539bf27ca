//! Child processes of a benchmark (parley nodes and gateways, etcd and
//! nats-server members): starting one with its output appended to a log,
//! SIGKILL, SIGTERM with a deadline, and its resident memory.
//!
//! Signals go only to a child this tool started and has not reaped, so the
//! pid cannot belong to another process. Each child runs in its own process
//! group, so a terminal's Ctrl-C reaches only the bench, and gets SIGKILL
//! when its handle is dropped or (Linux) when the bench's main thread dies.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// How long a child may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of a log that an error shows.
const LOG_TAIL_LINES: usize = 10;

/// A running child and the log its output goes to.
pub struct ChildProcess {
    name: String,
    log_path: PathBuf,
    child: Child,
}

impl ChildProcess {
    /// Starts `executable` with `args` and extra environment `env`.
    pub fn spawn(
        executable: &Path,
        name: &str,
        args: &[String],
        env: &[(&str, &str)],
        log_path: &Path,
    ) -> Result<ChildProcess> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("failed to open the log file {}", log_path.display()))?;
        writeln!(log, "--- parley-bench started {name}: {}", args.join(" "))
            .with_context(|| format!("failed to write the log file {}", log_path.display()))?;

        let mut command = Command::new(executable);
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
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

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails with the log tail if the child has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{} exited unexpectedly ({status}); last lines of {}:\n{}",
                self.name,
                self.log_path.display(),
                log_tail(&self.log_path)
            );
        }
        Ok(())
    }

    /// Sends SIGKILL and waits for the exit.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        if let Err(error) = self.child.wait().await {
            tracing::warn!(name = self.name, %error, "failed to wait for a killed child");
        }
    }

    /// Sends SIGTERM, then SIGKILL if the child has not exited after
    /// `STOP_TIMEOUT`.
    pub async fn terminate(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Some(pid) = self.child.id() {
            // SAFETY: kill has no memory-safety preconditions, and the pid
            // is our unreaped child (try_wait returned None).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(name = self.name, "no exit after SIGTERM; sending SIGKILL");
            self.kill().await;
        }
    }

    /// Returns the resident set size (VmRSS) in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.pid().context("the process has exited")?;
        rss_kib_of(pid)
    }
}

/// Reads VmRSS of `pid` from /proc/PID/status, in KiB.
pub fn rss_kib_of(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{path} has no VmRSS line in kB"))
}

/// Makes the kernel send SIGKILL to the child when the thread that started
/// it dies, so an aborted bench leaves no servers behind.
fn set_parent_death_signal(command: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls
    // only prctl and getppid, which are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other(
                    "parley-bench exited during the start",
                ));
            }
            Ok(())
        });
    }
}

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

/// Reserves `count` distinct free ports on 127.0.0.1. The probe listeners
/// close before the servers bind, so another process could take a port in
/// between. A server that fails to bind names the port in its log.
pub fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("failed to bind a free port on 127.0.0.1")?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}

/// Raises this process's open-file limit (inherited by the servers it
/// starts) to `target`, or as far as the hard limit allows when it may not
/// raise the hard limit. Returns the new soft limit.
pub fn raise_open_file_limit(target: u64) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE) failed");
    }

    if limit.rlim_cur >= target {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: limit.rlim_max.max(target),
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(target);
    }

    let capped = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE) failed");
    }
    tracing::warn!(
        target,
        hard_limit = limit.rlim_max,
        "could not raise the open-file hard limit, so the bench and its servers are capped \
         at the hard_limit field's number of files (a loopback TCP connection takes one on each side); raise \
         `ulimit -Hn` as root to open more connections"
    );
    Ok(limit.rlim_max)
}
