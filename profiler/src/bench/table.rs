//! The study's conclusion table: per mode, ping avg/p50/p99, bandwidth, nginx QPS and ab's mean
//! latency, each pod mode compared with the `host` baseline of the same run.

use std::fmt::Write as _;

use super::result::{ModeResult, PathResult};
use crate::lab::Mode;

/// One row's numbers.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Row {
    pub ping_avg_ms: Option<f64>,
    pub ping_p50_ms: Option<f64>,
    pub ping_p99_ms: Option<f64>,
    pub bandwidth_gbit_s: f64,
    pub qps: f64,
    pub ab_mean_ms: f64,
}

impl Row {
    pub fn of(path: &PathResult) -> Row {
        let stats = path.ping.stats;
        Row {
            ping_avg_ms: stats.map(|s| s.avg_ms),
            ping_p50_ms: stats.map(|s| s.p50_ms),
            ping_p99_ms: stats.map(|s| s.p99_ms),
            bandwidth_gbit_s: path.iperf3.receiver_bps / 1e9,
            qps: path.ab.requests_per_second,
            ab_mean_ms: path.ab.mean_time_per_request_ms,
        }
    }
}

/// The baseline: the `host` mode's row when it ran, else each mode's own host path.
pub fn baseline<'a>(results: &'a [ModeResult], result: &'a ModeResult) -> &'a PathResult {
    results
        .iter()
        .find(|r| r.mode == Mode::Host)
        .map_or(&result.host_path, |host| &host.host_path)
}

fn ratio(value: Option<f64>, base: Option<f64>) -> String {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => format!(" ({:.2}x)", v / b),
        _ => String::new(),
    }
}

fn percent(value: f64, base: f64) -> String {
    if base > 0.0 {
        format!(" ({:+.0}%)", (value / base - 1.0) * 100.0)
    } else {
        String::new()
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or("no reply".to_owned(), |v| format!("{v:.3}"))
}

/// The table's cells: header, one row per mode, and the note on what the deltas compare.
/// Every format (text here, Markdown and HTML in `netprof report`) renders these same cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Cells {
    pub header: [&'static str; 8],
    pub rows: Vec<[String; 8]>,
    pub note: String,
}

/// Latency ratios as `Nx`, throughput changes as `±N%`.
pub fn cells(results: &[ModeResult]) -> Cells {
    let header = [
        "mode",
        "path",
        "ping avg ms",
        "p50 ms",
        "p99 ms",
        "bandwidth Gbit/s",
        "nginx QPS",
        "ab mean ms",
    ];
    let mut rows: Vec<[String; 8]> = Vec::new();
    for result in results {
        let path = result.headline_path();
        let row = Row::of(path);
        let base = Row::of(baseline(results, result));
        let is_base = result.mode == Mode::Host;
        let delta = |text: String| if is_base { String::new() } else { text };
        rows.push([
            result.mode.to_string(),
            if result.pod_path.is_some() {
                "pod"
            } else {
                "host"
            }
            .to_owned(),
            format!(
                "{}{}",
                ms(row.ping_avg_ms),
                delta(ratio(row.ping_avg_ms, base.ping_avg_ms))
            ),
            format!(
                "{}{}",
                ms(row.ping_p50_ms),
                delta(ratio(row.ping_p50_ms, base.ping_p50_ms))
            ),
            format!(
                "{}{}",
                ms(row.ping_p99_ms),
                delta(ratio(row.ping_p99_ms, base.ping_p99_ms))
            ),
            format!(
                "{:.2}{}",
                row.bandwidth_gbit_s,
                delta(percent(row.bandwidth_gbit_s, base.bandwidth_gbit_s))
            ),
            format!("{:.0}{}", row.qps, delta(percent(row.qps, base.qps))),
            format!(
                "{:.3}{}",
                row.ab_mean_ms,
                delta(ratio(Some(row.ab_mean_ms), Some(base.ab_mean_ms)))
            ),
        ]);
    }
    let base_note = if results.iter().any(|r| r.mode == Mode::Host) {
        "against the host mode's node-to-node path"
    } else {
        "against each mode's own node-to-node path (host mode not run)"
    };
    let note =
        format!("pod modes: latency as a ratio, bandwidth and QPS as a change, {base_note}.");
    Cells { header, rows, note }
}

/// Renders the table as aligned text.
pub fn render(results: &[ModeResult]) -> String {
    let Cells { header, rows, note } = cells(results);
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&mut out, &header);
    line(
        &mut out,
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    for row in &rows {
        line(
            &mut out,
            &row.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
    let _ = writeln!(out, "{note}");
    out
}

/// Renders the table as Markdown (a pipe table and the note).
pub fn render_markdown(results: &[ModeResult]) -> String {
    let Cells { header, rows, note } = cells(results);
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(header.len()));
    for row in &rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    let _ = writeln!(out, "\n{note}");
    out
}
