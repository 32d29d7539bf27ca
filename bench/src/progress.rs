//! Progress bars on stderr (indicatif). Results go to stdout, so a run
//! piped to a file keeps only the tables; indicatif draws nothing when
//! stderr is not a terminal.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar for a phase of known length in seconds, advanced by a background
/// task until it is dropped.
pub struct TimedBar {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl TimedBar {
    pub fn start(label: &str, total: Duration) -> TimedBar {
        let bar = ProgressBar::new(total.as_millis() as u64);
        bar.set_style(style("{spinner} {msg:40} [{bar:30}] {elapsed}/{duration}"));
        bar.set_message(label.to_string());
        let ticking = bar.clone();
        let started = tokio::time::Instant::now();
        let ticker = tokio::spawn(async move {
            loop {
                ticking.set_position(started.elapsed().as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        TimedBar { bar, ticker }
    }
}

impl Drop for TimedBar {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

/// Returns a bar counting `total` items of setup work, such as users to
/// register. Callers `inc` it and `finish_and_clear` it.
pub fn counter(label: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(style("{spinner} {msg:40} [{bar:30}] {pos}/{len} {per_sec}"));
    bar.set_message(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Returns a spinner for a step of unknown length.
pub fn spinner(label: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(style("{spinner} {msg} {elapsed}"));
    bar.set_message(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("the progress templates are valid")
        .progress_chars("=> ")
}
