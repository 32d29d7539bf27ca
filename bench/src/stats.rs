//! Latency recording and summaries.
//!
//! Latencies are recorded in microseconds into an HDR histogram with 3
//! significant digits, from 1 µs to 10 minutes. A longer sample is clamped
//! to the maximum, so one stuck call cannot abort a run.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency the histograms track, in microseconds (10 minutes).
const LATENCY_US_MAX: u64 = 600_000_000;

/// Latencies of one measured run, plus its error count.
#[derive(Clone, Debug)]
pub struct Recorder {
    histogram: Histogram<u64>,
    errors: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        let histogram = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
            .expect("the bounds 1..=LATENCY_US_MAX with 3 digits are valid");
        Recorder {
            histogram,
            errors: 0,
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        self.histogram.saturating_record(micros);
    }

    pub fn record_error(&mut self) {
        self.errors += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.histogram
            .add(&other.histogram)
            .expect("recorders share the same bounds");
        self.errors += other.errors;
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Summarizes the run, whose measured part lasted `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let quantile = |q: f64| Duration::from_micros(self.histogram.value_at_quantile(q));
        let seconds = elapsed.as_secs_f64();
        let throughput = if seconds > 0.0 {
            self.count() as f64 / seconds
        } else {
            0.0
        };
        Summary {
            count: self.count(),
            errors: self.errors,
            elapsed,
            throughput,
            p50: quantile(0.50),
            p99: quantile(0.99),
            p999: quantile(0.999),
            max: Duration::from_micros(self.histogram.max()),
        }
    }
}

/// Throughput and latency percentiles of one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Successful operations per second.
    pub throughput: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

/// Formats a latency in the unit that keeps 3 significant digits readable.
pub fn format_latency(latency: Duration) -> String {
    let micros = latency.as_micros();
    if micros < 1_000 {
        format!("{micros} µs")
    } else if micros < 1_000_000 {
        format!("{:.2} ms", micros as f64 / 1_000.0)
    } else {
        format!("{:.2} s", micros as f64 / 1_000_000.0)
    }
}

/// Formats an operation rate with thousands separators.
pub fn format_rate(per_second: f64) -> String {
    let whole = per_second.round() as u64;
    let digits = whole.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// Formats `numerator / denominator` as a ratio like `1.35x`, or `-` when
/// the denominator is zero.
pub fn format_ratio(numerator: f64, denominator: f64) -> String {
    if denominator <= 0.0 {
        return "-".to_string();
    }
    format!("{:.2}x", numerator / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_percentiles_and_rate() {
        let mut recorder = Recorder::new();
        for millis in 1..=1_000 {
            recorder.record(Duration::from_millis(millis));
        }
        recorder.record_error();
        let summary = recorder.summary(Duration::from_secs(2));
        assert_eq!(summary.count, 1_000);
        assert_eq!(summary.errors, 1);
        assert!((summary.throughput - 500.0).abs() < 1e-9);
        let p50_ms = summary.p50.as_secs_f64() * 1e3;
        assert!((499.0..=501.0).contains(&p50_ms), "p50 {p50_ms} ms");
        let p99_ms = summary.p99.as_secs_f64() * 1e3;
        assert!((989.0..=991.0).contains(&p99_ms), "p99 {p99_ms} ms");
        let max_ms = summary.max.as_secs_f64() * 1e3;
        assert!((999.0..=1_001.0).contains(&max_ms), "max {max_ms} ms");
    }

    #[test]
    fn merge_adds_samples_and_errors() {
        let mut first = Recorder::new();
        first.record(Duration::from_micros(10));
        first.record_error();
        let mut second = Recorder::new();
        second.record(Duration::from_micros(20));
        second.record_error();
        first.merge(&second);
        assert_eq!(first.count(), 2);
        assert_eq!(first.summary(Duration::from_secs(1)).errors, 2);
    }

    #[test]
    fn empty_summary_has_zero_rate() {
        let summary = Recorder::new().summary(Duration::ZERO);
        assert_eq!(summary.count, 0);
        assert_eq!(summary.throughput, 0.0);
    }

    #[test]
    fn huge_latency_is_clamped() {
        let mut recorder = Recorder::new();
        recorder.record(Duration::from_secs(3_600));
        let max = recorder.summary(Duration::from_secs(1)).max;
        assert!(max >= Duration::from_secs(599), "{max:?}");
    }

    #[test]
    fn formats_read_well() {
        assert_eq!(format_latency(Duration::from_micros(812)), "812 µs");
        assert_eq!(format_latency(Duration::from_micros(1_234)), "1.23 ms");
        assert_eq!(format_latency(Duration::from_millis(2_500)), "2.50 s");
        assert_eq!(format_rate(1_234_567.4), "1,234,567");
        assert_eq!(format_rate(999.0), "999");
        assert_eq!(format_ratio(3.0, 2.0), "1.50x");
        assert_eq!(format_ratio(3.0, 0.0), "-");
    }
}
