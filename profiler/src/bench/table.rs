//! The study's conclusion table: per mode, ping avg/p50/p99, bandwidth, nginx QPS and ab's mean
//! latency, each pod mode compared with the `host` baseline of the same run.

use std::fmt::Write as _;

use super::result::{ModeResult, PathResult};
use crate::lab::Mode;
use crate::rundir::NetPath;

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

    /// Each number the median of its values in `rows` (repeats of one run).
    pub fn median(rows: &[Row]) -> Row {
        let opt = |f: fn(&Row) -> Option<f64>| {
            let v: Vec<f64> = rows.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        let num = |f: fn(&Row) -> f64| median(rows.iter().map(f).collect());
        Row {
            ping_avg_ms: opt(|r| r.ping_avg_ms),
            ping_p50_ms: opt(|r| r.ping_p50_ms),
            ping_p99_ms: opt(|r| r.ping_p99_ms),
            bandwidth_gbit_s: num(|r| r.bandwidth_gbit_s),
            qps: num(|r| r.qps),
            ab_mean_ms: num(|r| r.ab_mean_ms),
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The baseline: the `host` mode's row when it ran, else each mode's own host path.
pub fn baseline<'a>(results: &'a [ModeResult], result: &'a ModeResult) -> &'a PathResult {
    results
        .iter()
        .find(|r| r.mode == Mode::Host)
        .map_or(&result.host_path, |host| &host.host_path)
}

/// One mode's line of the table: its headline path's numbers and its baseline's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub mode: Mode,
    pub path: NetPath,
    pub values: Row,
    pub baseline: Row,
}

/// Whether the baseline is the host mode (else each mode's own host path).
pub fn host_mode_ran(results: &[ModeResult]) -> bool {
    results.iter().any(|r| r.mode == Mode::Host)
}

pub fn lines(results: &[ModeResult]) -> Vec<Line> {
    results
        .iter()
        .map(|r| Line {
            mode: r.mode,
            path: if r.pod_path.is_some() {
                NetPath::Pod
            } else {
                NetPath::Host
            },
            values: Row::of(r.headline_path()),
            baseline: Row::of(baseline(results, r)),
        })
        .collect()
}

/// The lines of several repeats of one run: per mode, each number the median over repeats.
/// A mode missing from a repeat is left out of that mode's medians only.
pub fn median_lines(repeats: &[Vec<Line>]) -> Vec<Line> {
    let mut modes: Vec<(Mode, NetPath)> = Vec::new();
    for line in repeats.iter().flatten() {
        if !modes.iter().any(|(m, _)| *m == line.mode) {
            modes.push((line.mode, line.path));
        }
    }
    modes
        .into_iter()
        .map(|(mode, path)| {
            let of_mode: Vec<&Line> = repeats
                .iter()
                .flatten()
                .filter(|l| l.mode == mode)
                .collect();
            let values: Vec<Row> = of_mode.iter().map(|l| l.values).collect();
            let baselines: Vec<Row> = of_mode.iter().map(|l| l.baseline).collect();
            Line {
                mode,
                path,
                values: Row::median(&values),
                baseline: Row::median(&baselines),
            }
        })
        .collect()
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
pub fn cells(lines: &[Line], host_mode_baseline: bool) -> Cells {
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
    for line in lines {
        let (row, base) = (line.values, line.baseline);
        let is_base = line.mode == Mode::Host;
        let delta = |text: String| if is_base { String::new() } else { text };
        rows.push([
            line.mode.to_string(),
            line.path.name().to_owned(),
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
    let base_note = if host_mode_baseline {
        "against the host mode's node-to-node path"
    } else {
        "against each mode's own node-to-node path (host mode not run)"
    };
    let note =
        format!("pod modes: latency as a ratio, bandwidth and QPS as a change, {base_note}.");
    Cells { header, rows, note }
}

/// The cells of one run's results.
pub fn cells_of(results: &[ModeResult]) -> Cells {
    cells(&lines(results), host_mode_ran(results))
}

/// Renders cells as aligned text.
pub fn render_cells(Cells { header, rows, note }: &Cells) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
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
    line(&mut out, header);
    let rules: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(
        &mut out,
        &rules.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for row in rows {
        line(
            &mut out,
            &row.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
    let _ = writeln!(out, "{note}");
    out
}

/// Renders one run's table as aligned text.
pub fn render(results: &[ModeResult]) -> String {
    render_cells(&cells_of(results))
}

/// Renders cells as Markdown (a pipe table and the note).
pub fn render_markdown(Cells { header, rows, note }: &Cells) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(header.len()));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    let _ = writeln!(out, "\n{note}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(p50: f64, qps: f64) -> Row {
        Row {
            ping_avg_ms: Some(p50),
            ping_p50_ms: Some(p50),
            ping_p99_ms: None,
            bandwidth_gbit_s: 10.0,
            qps,
            ab_mean_ms: 5.0,
        }
    }

    #[test]
    fn repeats_give_each_cell_its_median() {
        let line = |p50, qps| Line {
            mode: Mode::Calico,
            path: NetPath::Pod,
            values: row(p50, qps),
            baseline: row(0.040, 10000.0),
        };
        let m = median_lines(&[
            vec![line(0.100, 8000.0)],
            vec![line(0.090, 7000.0)],
            vec![line(0.130, 7600.0)],
        ]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].values.ping_p50_ms, Some(0.100));
        assert_eq!(m[0].values.qps, 7600.0);
        assert_eq!(m[0].values.ping_p99_ms, None);
        let cells = cells(&m, true);
        assert_eq!(cells.rows[0][3], "0.100 (2.50x)");
        assert_eq!(cells.rows[0][6], "7600 (-24%)");
    }
}
