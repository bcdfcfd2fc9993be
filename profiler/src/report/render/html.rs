//! `--format html`: one self-contained page, viewable offline: inline CSS and inline SVG, no
//! scripts, no fonts or images from anywhere. The same sections as the text report, and after
//! the split without netprof a waterfall per pod mode of what each stage adds to the p50 RTT
//! (each bar in two shades: node 1's part, then node 2's; ending with what is unexplained),
//! and the RTT CDFs.

use std::fmt::Write as _;

use super::{
    headline, measured_by, sections, us_signed, Part, Section, WITH_AGENTS_INTRO, WITH_AGENTS_TITLE,
};
use crate::report::category::Category;
use crate::report::latency::LatencyAttribution;
use crate::report::Report;
use crate::rundir::Node;

const CSS: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:76em;padding:0 1em;color:#1b1f24}
h1{font-size:1.35em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{background:#f6f8fa}
tr.sum td{font-weight:600;background:#f6f8fa}tr.unexplained td{background:#fff8c5}
p.note{color:#57606a;font-size:.92em;margin:.3em 0}
.charts{display:flex;flex-wrap:wrap;gap:1.2em}.chart{border:1px solid #d0d7de;border-radius:6px;padding:.5em}
.chart h3{font-size:1em;margin:.1em 0 .4em}svg text{font:11px system-ui,sans-serif;fill:#1b1f24}
ul.notes li{color:#57606a;margin:.2em 0}h2.part{font-size:1.3em;border-bottom:3px solid #1b1f24}div.scroll{overflow-x:auto;max-width:100%}";

/// A color per stage, and for the unexplained rest.
fn color(stage: Option<Category>) -> &'static str {
    match stage {
        Some(Category::Veth) => "#4e79a7",
        Some(Category::Backlog) => "#a0cbe8",
        Some(Category::Bridge) => "#f28e2b",
        Some(Category::Routing) => "#59a14f",
        Some(Category::Conntrack) => "#e15759",
        Some(Category::Nat) => "#b07aa1",
        Some(Category::Filter) => "#ff9da7",
        Some(Category::VxlanEncap) => "#76b7b2",
        Some(Category::VxlanDecap) => "#499894",
        Some(Category::Uplink) => "#9c755f",
        Some(Category::Device) => "#edc948",
        Some(Category::Other) => "#bab0ac",
        None => "#8c8c8c",
    }
}

const MODE_COLORS: [&str; 6] = [
    "#1b1f24", "#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1",
];

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn table(out: &mut String, id: &str, header: &[String], rows: &[Vec<String>]) {
    // Wide tables scroll inside the page instead of widening it.
    let _ = write!(
        out,
        "<div class=\"scroll\"><table id=\"{}\"><thead><tr>",
        escape(id)
    );
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>\n");
    for row in rows {
        let first = row.first().map(String::as_str).unwrap_or("");
        let class = if first.starts_with('=') || first == "measured delta" {
            " class=\"sum\""
        } else if first.starts_with("unexplained") {
            " class=\"unexplained\""
        } else {
            ""
        };
        let _ = write!(out, "<tr{class}>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></div>\n");
}

fn section(out: &mut String, s: &Section) {
    let _ = writeln!(out, "<h2 id=\"{}\">{}</h2>", s.id, escape(&s.title));
    for line in &s.intro {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(line));
    }
    if !s.rows.is_empty() {
        table(out, &format!("table-{}", s.id), &s.header, &s.rows);
    }
    for line in &s.footer {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(line));
    }
}

/// A waterfall of one mode's p50 RTT delta: one row per stage that adds or removes time (a bar
/// from the running total before the stage to after it), then the unexplained rest, then the
/// measured delta as a bar from 0. Scale shared by all modes (`lo..hi` µs).
fn waterfall(out: &mut String, l: &LatencyAttribution, lo: f64, hi: f64) {
    let split = &l.clean;
    // (label, stage, node 1's part, node 2's part)
    let mut rows: Vec<(String, Option<Category>, i64, i64)> = split
        .stages
        .iter()
        .filter(|s| s.delta_ns != 0)
        .map(|s| {
            (
                s.stage.label().to_owned(),
                Some(s.stage),
                s.node(Node::One),
                s.node(Node::Two),
            )
        })
        .collect();
    rows.push(("unexplained".to_owned(), None, split.unexplained_ns, 0));
    let (label_w, plot_w, value_w, row_h) = (104.0, 300.0, 56.0, 16.0);
    let height = (rows.len() + 1) as f64 * row_h + 26.0;
    let width = label_w + plot_w + value_w;
    let x = |us: f64| label_w + (us - lo) / (hi - lo) * plot_w;
    let share = split
        .explained_pct
        .map_or("n/a".to_owned(), |p| format!("{p:.1}%"));
    let _ = write!(
        out,
        "<div class=\"chart\"><h3>{} — p50 +{:.1} µs, explained {}</h3><svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{} waterfall\">",
        escape(&l.mode),
        split.delta_ns as f64 / 1e3,
        share,
        escape(&l.mode)
    );
    let zero = x(0.0);
    let _ = write!(out, "<line x1=\"{zero:.1}\" y1=\"4\" x2=\"{zero:.1}\" y2=\"{:.1}\" stroke=\"#8c959f\" stroke-width=\"1\"/>", height - 20.0);
    let mut total = 0.0_f64;
    for (i, (label, stage, n1, n2)) in rows.iter().enumerate() {
        let y = 4.0 + i as f64 * row_h;
        let ns = n1 + n2;
        let fill = color(*stage);
        let pattern = if stage.is_none() {
            " stroke=\"#57606a\" stroke-dasharray=\"3 2\" fill-opacity=\"0.55\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            label_w - 6.0,
            y + 11.5,
            escape(label)
        );
        // Node 1's part in full colour, node 2's lighter, one after the other.
        for (node, part, opacity) in [(Node::One, *n1, "1"), (Node::Two, *n2, "0.5")] {
            if part == 0 {
                continue;
            }
            let d = part as f64 / 1e3;
            let (a, b) = (x(total), x(total + d));
            let (left, w) = (a.min(b), (a - b).abs().max(1.0));
            let whose = if stage.is_some() {
                format!(" on {}", node.name())
            } else {
                String::new()
            };
            let _ = write!(
                out,
                "<rect x=\"{left:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{fill}\" fill-opacity=\"{opacity}\"{pattern}><title>{}{whose}: {} µs</title></rect>",
                y + 2.0,
                row_h - 4.0,
                escape(label),
                us_signed(part),
            );
            total += d;
        }
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            label_w + plot_w + 6.0,
            y + 11.5,
            us_signed(ns)
        );
    }
    let y = 4.0 + rows.len() as f64 * row_h;
    let (a, b) = (x(0.0), x(split.delta_ns as f64 / 1e3));
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-weight=\"600\">measured delta</text><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#1b1f24\"/><text x=\"{:.1}\" y=\"{:.1}\" font-weight=\"600\">{}</text>",
        label_w - 6.0,
        y + 11.5,
        a.min(b),
        y + 2.0,
        (a - b).abs().max(1.0),
        row_h - 4.0,
        label_w + plot_w + 6.0,
        y + 11.5,
        us_signed(split.delta_ns)
    );
    // Axis ticks.
    let ty = height - 6.0;
    for tick in ticks(lo, hi) {
        let _ = write!(out, "<text x=\"{:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\" fill=\"#57606a\">{tick:.0}</text>", x(tick));
    }
    out.push_str("</svg></div>\n");
}

/// Round tick values across `lo..hi`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    let mut out = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + 1e-9 {
        // No "-0" label.
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn waterfalls(out: &mut String, report: &Report) {
    if report.latency.is_empty() {
        return;
    }
    // One scale for every mode: from the lowest running total to the highest.
    let (mut lo, mut hi) = (0.0_f64, 0.0_f64);
    for l in &report.latency {
        let mut total = 0.0;
        for ns in l
            .clean
            .stages
            .iter()
            .flat_map(|s| [s.node(Node::One), s.node(Node::Two)])
            .chain([l.clean.unexplained_ns])
        {
            total += ns as f64 / 1e3;
            lo = lo.min(total);
            hi = hi.max(total);
        }
        lo = lo.min(l.clean.delta_ns as f64 / 1e3);
        hi = hi.max(l.clean.delta_ns as f64 / 1e3);
    }
    let pad = (hi - lo) * 0.04;
    let _ = writeln!(
        out,
        "<h2 id=\"waterfall\">Where the extra p50 RTT goes, without netprof (µs per RTT, against {}, {})</h2>",
        escape(&report.latency[0].baseline),
        escape(report.latency[0].clean.measure.label())
    );
    out.push_str("<p class=\"note\">Each bar starts where the previous stage ended; a bar to the left is a stage the pod path spends less time in than the baseline. A stage's bar is node 1's part in full colour, then node 2's lighter. The dashed bar is what the stages do not explain; the black bar is the measured delta.</p><div class=\"charts\">\n");
    for l in &report.latency {
        waterfall(out, l, lo - pad, hi + pad);
    }
    out.push_str("</div>\n");
}

/// RTT CDFs of every mode's headline path on one chart.
fn cdfs(out: &mut String, report: &Report) {
    let series: Vec<(&str, Vec<f64>)> = report
        .rtt_samples
        .iter()
        .filter(|s| !s.rtts_us.is_empty())
        .map(|s| {
            let mut v: Vec<f64> = s
                .rtts_us
                .iter()
                .copied()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .collect();
            v.sort_by(f64::total_cmp);
            (s.mode.as_str(), v)
        })
        .collect();
    if series.is_empty() {
        return;
    }
    // The x axis ends a little past the highest p99, so one outlier does not flatten the rest.
    let p99 = |v: &[f64]| v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1];
    let max_x = series.iter().map(|(_, v)| p99(v)).fold(0.0_f64, f64::max) * 1.15;
    let clipped: usize = series
        .iter()
        .map(|(_, v)| v.iter().filter(|x| **x > max_x).count())
        .sum();
    let (left, top, plot_w, plot_h) = (46.0, 10.0, 620.0, 260.0);
    let (width, height) = (left + plot_w + 200.0, top + plot_h + 36.0);
    let x = |us: f64| left + us.min(max_x) / max_x * plot_w;
    let y = |q: f64| top + (1.0 - q) * plot_h;
    let _ = writeln!(out, "<h2 id=\"cdf\">Ping RTT distribution (CDF, µs)</h2>");
    let _ = write!(
        out,
        "<div class=\"chart\"><svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"RTT CDFs\"><rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#d0d7de\"/>"
    );
    for q in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = write!(out, "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eaeef2\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#57606a\">{q:.2}</text>", left + plot_w, y(q), y(q), left - 4.0, y(q) + 4.0);
    }
    for tick in ticks(0.0, max_x) {
        let _ = write!(out, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\">{tick:.0}</text>", x(tick), top + plot_h + 16.0);
    }
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">RTT µs</text>",
        left + plot_w / 2.0,
        top + plot_h + 32.0
    );
    for (i, (mode, v)) in series.iter().enumerate() {
        let n = v.len() as f64;
        let mut points = format!("{:.1},{:.1}", x(v[0]), y(0.0));
        for (k, us) in v.iter().enumerate() {
            let _ = write!(
                points,
                " {:.1},{:.1} {:.1},{:.1}",
                x(*us),
                y(k as f64 / n),
                x(*us),
                y((k + 1) as f64 / n)
            );
        }
        let c = MODE_COLORS[i % MODE_COLORS.len()];
        let _ = write!(out, "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.6\" points=\"{points}\"><title>{}</title></polyline>", escape(mode));
        let ly = top + 14.0 + i as f64 * 16.0;
        let p50 = v[(v.len() - 1) / 2];
        let _ = write!(out, "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{c}\" stroke-width=\"3\"/><text x=\"{:.1}\" y=\"{:.1}\">{} ({:.0} µs)</text>", left + plot_w + 10.0, left + plot_w + 28.0, left + plot_w + 32.0, ly + 4.0, escape(mode), p50);
    }
    out.push_str("</svg>");
    if clipped > 0 {
        let _ = write!(
            out,
            "<p class=\"note\">{clipped} RTTs above {max_x:.0} µs are drawn at the right edge.</p>"
        );
    }
    out.push_str("</div>\n");
}

pub fn render(report: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>netprof report</title><style>{CSS}</style></head><body>\n<h1>{}</h1>\n",
        escape(&headline(report))
    );
    for line in measured_by(report) {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(&line));
    }
    let mut part = Part::Clean;
    let mut charts_drawn = false;
    for s in sections(report) {
        if s.part != part {
            part = s.part;
            let _ = writeln!(
                out,
                "<h2 id=\"with-agents\" class=\"part\">{}</h2><p class=\"note\">{}</p>",
                escape(WITH_AGENTS_TITLE),
                escape(WITH_AGENTS_INTRO)
            );
        }
        section(&mut out, &s);
        if s.id == "latency" {
            waterfalls(&mut out, report);
            cdfs(&mut out, report);
            charts_drawn = true;
        }
    }
    if !charts_drawn {
        cdfs(&mut out, report);
    }
    out.push_str("<h2 id=\"notes\">Notes</h2><ul class=\"notes\">\n");
    for note in &report.notes {
        let _ = writeln!(out, "<li>{}</li>", escape(note));
    }
    out.push_str("</ul>\n</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_ticks_are_round() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(ticks(0.0, 100.0), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(ticks(-7.0, 23.0), vec![0.0, 10.0, 20.0]);
        assert!(ticks(-7.0, 23.0)[0].is_sign_positive());
        assert_eq!(ticks(-12.0, 30.0), vec![-10.0, 0.0, 10.0, 20.0, 30.0]);
    }
}
