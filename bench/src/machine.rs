//! The machine a run measured: CPU model, cores, memory, kernel, the fsync
//! latency of the disk under the temporary folder, and the date.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::stats::{format_latency, Recorder};

/// Writes of 4 KiB, each followed by fdatasync, in the fsync probe.
const FSYNC_SAMPLES: usize = 200;

pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub fsync_p50: Duration,
    pub fsync_p99: Duration,
    pub date: String,
}

impl Machine {
    /// Reads /proc and measures fsync latency in `directory`.
    pub fn probe(directory: &Path) -> Result<Machine> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let (fsync_p50, fsync_p99) = measure_fsync(directory)?;
        Ok(Machine {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, |cores| cores.get()),
            memory_gib: memory_kib / (1024.0 * 1024.0),
            kernel,
            fsync_p50,
            fsync_p99,
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        })
    }

    pub fn to_markdown(&self) -> String {
        format!(
            "| property | value |\n|---|---|\n| CPU | {} |\n| cores | {} |\n| RAM | {:.1} GiB |\n\
             | kernel | {} |\n| disk fsync (4 KiB write + fdatasync) | p50 {}, p99 {} |\n\
             | date | {} |\n",
            self.cpu_model,
            self.cores,
            self.memory_gib,
            self.kernel,
            format_latency(self.fsync_p50),
            format_latency(self.fsync_p99),
            self.date
        )
    }

    pub fn to_text(&self) -> String {
        format!(
            "machine: {} x{} cores, {:.1} GiB RAM, kernel {}, fsync p50 {} p99 {}, {}",
            self.cpu_model,
            self.cores,
            self.memory_gib,
            self.kernel,
            format_latency(self.fsync_p50),
            format_latency(self.fsync_p99),
            self.date
        )
    }
}

/// Returns the p50 and p99 latency of a 4 KiB write plus fdatasync on a
/// file in `directory`.
fn measure_fsync(directory: &Path) -> Result<(Duration, Duration)> {
    let path = directory.join("fsync-probe");
    let mut file = std::fs::File::create(&path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    let block = [0x5a_u8; 4096];
    let mut recorder = Recorder::new();
    for _ in 0..FSYNC_SAMPLES {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        recorder.record(started.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    let summary = recorder.summary(Duration::from_secs(1));
    Ok((summary.p50, summary.p99))
}
