//! The self-contained HTML report of a chaos run: the verdict, the rerun
//! command, summary tables and an inline SVG timeline. The timeline draws
//! the faults as colored spans, one lane per kind, above acknowledged sends
//! per second and send latency (p50 and p99 per second, log scale). The
//! page loads no scripts, fonts or images.

use std::fmt::Write;

use parley_core::checkers::Violation;

use crate::schedule::FaultKind;
use crate::stats::{FaultSpan, Second, Summary, NO_FAULT};

/// The run facts the report shows beside the summary.
pub struct ReportInput<'a> {
    pub title: String,
    pub rerun_command: String,
    pub summary: &'a Summary,
    pub spans: &'a [FaultSpan],
    pub violations: &'a [Violation],
    /// Findings that do not fail the run.
    pub warnings: &'a [String],
    /// Start and end of the fault phase, in ms on the recorder's clock.
    pub phase: (u64, u64),
    /// End of the run, in ms on the recorder's clock.
    pub end_ms: u64,
}

/// Violations listed in full; the rest are counted.
const VIOLATIONS_LISTED_MAX: usize = 200;

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 150.0;
const RIGHT: f64 = 20.0;
const LANE_HEIGHT: f64 = 18.0;
const CHART_HEIGHT: f64 = 170.0;
const GAP: f64 = 40.0;

/// Returns the color of a fault kind on the timeline.
fn color(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::KillRestart => "#d62728",
        FaultKind::Pause => "#9467bd",
        FaultKind::Partition => "#ff7f0e",
        FaultKind::OneWayPartition => "#e6a800",
        FaultKind::Delay => "#17becf",
        FaultKind::ClockSkew => "#2ca02c",
        FaultKind::RollingRestart => "#8c564b",
        FaultKind::PowerCut => "#111111",
        FaultKind::PowerLoss => "#e377c2",
    }
}

/// Renders the whole report page.
pub fn render(input: &ReportInput) -> String {
    let verdict = if input.violations.is_empty() {
        "<p class=\"pass\">PASS: no violations</p>".to_string()
    } else {
        format!(
            "<p class=\"fail\">FAIL: {} violations</p>",
            input.violations.len()
        )
    };
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title><style>{STYLE}</style></head><body>\n\
         <h1>{title}</h1>\n{verdict}\n<p>Rerun: <code>{rerun}</code></p>\n\
         <h2>Timeline</h2>\n{timeline}\n{tables}\n{violations}\n{warnings}\n</body></html>\n",
        title = escape(&input.title),
        rerun = escape(&input.rerun_command),
        timeline = timeline(input),
        tables = tables(input),
        violations = violation_list(input.violations),
        warnings = warning_list(input.warnings),
    );
    page
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222}\
table{border-collapse:collapse;margin:8px 0 20px}\
td,th{border:1px solid #ccc;padding:3px 10px;text-align:right}\
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}\
.pass{color:#17762a;font-weight:bold;font-size:1.2em}\
.fail{color:#b00020;font-weight:bold;font-size:1.2em}\
code{background:#f3f3f3;padding:2px 4px}\
li{font-family:monospace;white-space:pre-wrap;margin-bottom:4px}\
svg text{font-size:11px;fill:#333}";

/// Maps milliseconds of the run to x pixels.
struct Scale {
    end_ms: f64,
}

impl Scale {
    fn x(&self, ms: u64) -> f64 {
        LEFT + (ms as f64 / self.end_ms).min(1.0) * (WIDTH - LEFT - RIGHT)
    }
}

fn timeline(input: &ReportInput) -> String {
    let scale = Scale {
        end_ms: input.end_ms.max(1) as f64,
    };
    let kinds: Vec<FaultKind> = FaultKind::ALL
        .into_iter()
        .filter(|kind| input.spans.iter().any(|span| span.kind == *kind))
        .collect();
    let lanes_height = LANE_HEIGHT * kinds.len().max(1) as f64;
    let throughput_top = lanes_height + GAP;
    let latency_top = throughput_top + CHART_HEIGHT + GAP;
    let height = latency_top + CHART_HEIGHT + 30.0;

    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\">"
    );
    fault_lanes(&mut svg, &scale, &kinds, input.spans);
    fault_bands(&mut svg, &scale, input.spans, throughput_top);
    fault_bands(&mut svg, &scale, input.spans, latency_top);
    phase_markers(&mut svg, &scale, input.phase, height - 30.0);
    throughput_chart(&mut svg, &scale, input.summary, throughput_top);
    latency_chart(&mut svg, &scale, input.summary, latency_top);
    time_axis(&mut svg, &scale, input.end_ms, height - 30.0);
    svg.push_str("</svg>");
    svg
}

fn fault_lanes(svg: &mut String, scale: &Scale, kinds: &[FaultKind], spans: &[FaultSpan]) {
    if kinds.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{LEFT}\" y=\"13\">no faults were injected</text>"
        );
        return;
    }
    for (lane, kind) in kinds.iter().enumerate() {
        let y = lane as f64 * LANE_HEIGHT;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            LEFT - 6.0,
            y + 13.0,
            kind.name()
        );
        for span in spans.iter().filter(|span| span.kind == *kind) {
            let (x0, x1) = (scale.x(span.start_ms), scale.x(span.end_ms));
            let _ = write!(
                svg,
                "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\">\
                 <title>{} ({:.1}-{:.1} s)</title></rect>",
                y + 2.0,
                (x1 - x0).max(2.0),
                LANE_HEIGHT - 4.0,
                color(*kind),
                escape(&span.description),
                span.start_ms as f64 / 1000.0,
                span.end_ms as f64 / 1000.0
            );
        }
    }
}

/// Draws every fault span as a faint band behind a chart.
fn fault_bands(svg: &mut String, scale: &Scale, spans: &[FaultSpan], top: f64) {
    for span in spans {
        let (x0, x1) = (scale.x(span.start_ms), scale.x(span.end_ms));
        let _ = write!(
            svg,
            "<rect x=\"{x0:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{CHART_HEIGHT}\" \
             fill=\"{}\" fill-opacity=\"0.15\"/>",
            (x1 - x0).max(1.0),
            color(span.kind)
        );
    }
}

fn phase_markers(svg: &mut String, scale: &Scale, (start, end): (u64, u64), bottom: f64) {
    // The start label sits right of its line and the stop label left of
    // its line, so neither runs off the chart.
    for (ms, label, offset, anchor) in [
        (start, "faults start", 3.0, "start"),
        (end, "senders stop", -3.0, "end"),
    ] {
        let x = scale.x(ms);
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"#555\" \
             stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\" \
             text-anchor=\"{anchor}\">{label}</text>",
            x + offset,
            bottom - 4.0
        );
    }
}

fn throughput_chart(svg: &mut String, scale: &Scale, summary: &Summary, top: f64) {
    let peak = summary
        .seconds
        .iter()
        .map(|second| second.acked)
        .max()
        .unwrap_or(0);
    let maximum = nice_ceiling(peak.max(1));
    chart_frame(svg, top, "acked sends per second");
    for fraction in [0.0, 0.5, 1.0] {
        let value = maximum as f64 * fraction;
        let y = top + CHART_HEIGHT * (1.0 - fraction);
        y_tick(svg, y, &format!("{value:.0}"));
    }
    for second in &summary.seconds {
        let x0 = scale.x(second.second * 1000);
        let x1 = scale.x((second.second + 1) * 1000);
        let bar = CHART_HEIGHT * second.acked as f64 / maximum as f64;
        let _ = write!(
            svg,
            "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bar:.1}\" fill=\"#4c78a8\">\
             <title>{} s: {} acked</title></rect>",
            top + CHART_HEIGHT - bar,
            (x1 - x0 - 0.5).max(0.5),
            second.second,
            second.acked
        );
    }
}

/// Latency from 1 ms to the decade above the worst p99, on a log scale.
fn latency_chart(svg: &mut String, scale: &Scale, summary: &Summary, top: f64) {
    let worst = summary
        .seconds
        .iter()
        .filter_map(|second| second.p99_ms)
        .max()
        .unwrap_or(1)
        .max(10);
    let decades = (worst as f64).log10().ceil().max(1.0);
    let y = |ms: u64| top + CHART_HEIGHT * (1.0 - (ms.max(1) as f64).log10() / decades);
    chart_frame(svg, top, "send latency per second: p50 (blue), p99 (red)");
    for decade in 0..=decades as u32 {
        let ms = 10u64.pow(decade);
        let label = if ms >= 1000 {
            format!("{} s", ms / 1000)
        } else {
            format!("{ms} ms")
        };
        y_tick(svg, y(ms), &label);
    }
    latency_line(
        svg,
        scale,
        &summary.seconds,
        |second| second.p50_ms,
        "#1f77b4",
        &y,
    );
    latency_line(
        svg,
        scale,
        &summary.seconds,
        |second| second.p99_ms,
        "#d62728",
        &y,
    );
}

/// Draws one latency percentile as a path, broken where a second has no
/// acked send.
fn latency_line(
    svg: &mut String,
    scale: &Scale,
    seconds: &[Second],
    pick: impl Fn(&Second) -> Option<u64>,
    stroke: &str,
    y: &impl Fn(u64) -> f64,
) {
    let mut path = String::new();
    let mut drawing = false;
    for second in seconds {
        let Some(ms) = pick(second) else {
            drawing = false;
            continue;
        };
        let x = scale.x(second.second * 1000 + 500);
        // A zero-length segment after each move draws a lone second as a
        // dot, thanks to the round line caps.
        if drawing {
            let _ = write!(path, "L{x:.1},{:.1} ", y(ms));
        } else {
            let _ = write!(path, "M{x:.1},{:.1} l0,0 ", y(ms));
        }
        drawing = true;
    }
    let _ = write!(
        svg,
        "<path d=\"{path}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"1.5\" \
         stroke-linecap=\"round\"/>"
    );
}

fn chart_frame(svg: &mut String, top: f64, title: &str) {
    let _ = write!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{top:.1}\" width=\"{}\" height=\"{CHART_HEIGHT}\" fill=\"none\" \
         stroke=\"#999\"/><text x=\"{LEFT}\" y=\"{:.1}\">{title}</text>",
        WIDTH - LEFT - RIGHT,
        top - 6.0
    );
}

fn y_tick(svg: &mut String, y: f64, label: &str) {
    let _ = write!(
        svg,
        "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{LEFT}\" y2=\"{y:.1}\" stroke=\"#999\"/>\
         <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
        LEFT - 4.0,
        LEFT - 6.0,
        y + 4.0
    );
}

fn time_axis(svg: &mut String, scale: &Scale, end_ms: u64, y: f64) {
    let step_secs = match end_ms / 1000 {
        0..=120 => 10,
        121..=600 => 30,
        _ => 60,
    };
    let mut second = 0;
    while second * 1000 <= end_ms {
        let x = scale.x(second * 1000);
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#999\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{second} s</text>",
            y + 4.0,
            y + 16.0
        );
        second += step_secs;
    }
}

/// Rounds up to 1, 2 or 5 times a power of ten.
fn nice_ceiling(value: u64) -> u64 {
    let mut magnitude = 1;
    loop {
        for step in [1, 2, 5] {
            if step * magnitude >= value {
                return step * magnitude;
            }
        }
        magnitude *= 10;
    }
}

fn tables(input: &ReportInput) -> String {
    let summary = input.summary;
    let sends = &summary.sends;
    let mut html = String::new();
    let _ = write!(
        html,
        "<h2>Sends</h2><table><tr><th>invoked</th><th>acked</th><th>failed, ambiguous</th>\
         <th>failed, rejected</th><th>in flight at stop</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        sends.invoked, sends.acked, sends.failed_ambiguous, sends.failed_definite, sends.in_flight
    );
    html.push_str(
        "<h2>Faults</h2><table><tr><th>kind</th><th>injected</th>\
         <th>longest window without an acked send</th></tr>",
    );
    for (name, count) in fault_rows(summary) {
        let window = summary
            .longest_gap
            .get(&name)
            .map(|window| {
                format!(
                    "{:.1} s (from {:.1} s)",
                    window.length_ms() as f64 / 1000.0,
                    window.start_ms as f64 / 1000.0
                )
            })
            .unwrap_or_else(|| "-".into());
        let _ = write!(
            html,
            "<tr><td>{name}</td><td>{count}</td><td>{window}</td></tr>"
        );
    }
    html.push_str("</table><h2>Violations by invariant</h2><table>");
    html.push_str("<tr><th>invariant</th><th>violations</th></tr>");
    for (invariant, count) in invariant_rows(summary) {
        let _ = write!(html, "<tr><td>{invariant}</td><td>{count}</td></tr>");
    }
    html.push_str("</table>");
    html
}

/// Returns a row per injected fault kind, then one for `NO_FAULT`.
pub fn fault_rows(summary: &Summary) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = summary
        .faults_by_kind
        .iter()
        .map(|(kind, count)| (kind.name().to_string(), count.to_string()))
        .collect();
    rows.push((NO_FAULT.to_string(), String::new()));
    rows
}

/// Checks a run makes besides the history checkers: delivery to every
/// device after healing, leaders and applied indexes agreeing, no process
/// exiting or panicking on its own, and every fault applied and undone.
const RUN_CHECKS: [&str; 5] = [
    parley_simulation::verify::LIVENESS,
    crate::run::CONVERGED,
    crate::run::PROCESS_EXIT,
    crate::run::PANIC,
    crate::run::FAULT_INJECTION,
];

/// Returns a row per check the run makes, every checker's included, so a
/// passing run shows what it checked.
pub fn invariant_rows(summary: &Summary) -> Vec<(&'static str, u64)> {
    let mut rows: Vec<(&'static str, u64)> = parley_core::checkers::INVARIANTS
        .iter()
        .chain(RUN_CHECKS.iter())
        .map(|name| (*name, 0))
        .collect();
    for (invariant, count) in &summary.violations_by_invariant {
        match rows.iter_mut().find(|(name, _)| name == invariant) {
            Some(row) => row.1 = *count,
            None => rows.push((invariant, *count)),
        }
    }
    rows
}

fn violation_list(violations: &[Violation]) -> String {
    if violations.is_empty() {
        return String::new();
    }
    let mut html = String::from("<h2>Violations</h2><ol>");
    for violation in violations.iter().take(VIOLATIONS_LISTED_MAX) {
        let _ = write!(
            html,
            "<li>[{}] {}</li>",
            violation.invariant,
            escape(&violation.detail)
        );
    }
    html.push_str("</ol>");
    if violations.len() > VIOLATIONS_LISTED_MAX {
        let _ = write!(
            html,
            "<p>and {} more; the console output lists them all.</p>",
            violations.len() - VIOLATIONS_LISTED_MAX
        );
    }
    html
}

fn warning_list(warnings: &[String]) -> String {
    if warnings.is_empty() {
        return String::new();
    }
    let mut html = String::from("<h2>Warnings</h2><ul>");
    for warning in warnings {
        let _ = write!(html, "<li>{}</li>", escape(warning));
    }
    html.push_str("</ul>");
    html
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{summarize, FaultSpan};
    use parley_core::history::History;

    fn report(spans: &[FaultSpan], violations: &[Violation]) -> String {
        let summary = summarize(&History::new(), spans, (0, 10_000), violations);
        render(&ReportInput {
            title: "parley-chaos seed 1".into(),
            rerun_command: "parley-chaos run --seed 1".into(),
            summary: &summary,
            spans,
            violations,
            warnings: &["node2 did not exit".to_string()],
            phase: (0, 10_000),
            end_ms: 12_000,
        })
    }

    #[test]
    fn escape_replaces_markup() {
        assert_eq!(
            escape("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn nice_ceiling_rounds_to_1_2_5() {
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(12), 20);
        assert_eq!(nice_ceiling(51), 100);
    }

    #[test]
    fn report_has_no_external_resources() {
        let page = report(&[], &[]);
        assert!(page.contains("PASS"), "{page}");
        assert!(page.contains("node2 did not exit"), "{page}");
        for forbidden in ["<script", "<link", "src=", "@import", "url("] {
            assert!(!page.contains(forbidden), "found {forbidden}");
        }
    }

    #[test]
    fn report_lists_spans_and_violations() {
        let spans = [FaultSpan {
            kind: FaultKind::Partition,
            description: "partition nodes {1} from the rest".into(),
            start_ms: 1_000,
            end_ms: 3_000,
        }];
        let violations = [Violation {
            invariant: "gap_free",
            detail: "device <x> skipped seq 3".into(),
        }];
        let page = report(&spans, &violations);
        assert!(page.contains("FAIL: 1 violations"), "{page}");
        assert!(page.contains("partition nodes {1} from the rest"));
        assert!(page.contains("device &lt;x&gt; skipped seq 3"));
        assert!(page.contains(color(FaultKind::Partition)));
    }

    #[test]
    fn invariant_rows_include_every_check() {
        let summary = summarize(&History::new(), &[], (0, 1), &[]);
        let rows = invariant_rows(&summary);
        assert_eq!(
            rows.len(),
            parley_core::checkers::INVARIANTS.len() + RUN_CHECKS.len()
        );
        assert!(rows.iter().any(|(name, _)| *name == "liveness_delivery"));
        assert!(rows.iter().all(|(_, count)| *count == 0));
    }
}
