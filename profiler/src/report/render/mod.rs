//! The report's formats. Text, Markdown and HTML render the same [`Section`]s (titles, cells,
//! notes) built once here, so the three never disagree; JSON is the [`Report`] itself.
//!
//! Order, in every format: the study's table without agents, where the extra p50 RTT goes
//! without netprof (per stage, then per node), the repeats' spread, throughput, the
//! ground-truth checks; then a part that says it was measured with the agents attached (their
//! table, the profiled splits with netprof's share, the probes' cost, drops, the agents' cost).

pub mod html;
pub mod json;
pub mod markdown;
mod sections_latency;
mod sections_other;
mod sections_validation;
pub mod table;

use super::Report;
use crate::bench::cpu_idle::CpuIdle;
use crate::bench::table as study;

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Markdown,
    Html,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Table, Format::Json, Format::Markdown, Format::Html];
}

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Table => table::render(report),
        Format::Json => json::render(report),
        Format::Markdown => markdown::render(report),
        Format::Html => html::render(report),
    }
}

/// Which part of the report a section belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The numbers as the benchmarks see them, and their attribution without netprof.
    Clean,
    /// What was measured with netprof's agents attached.
    WithAgents,
}

/// One titled table with notes, format-neutral.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// Anchor / machine name.
    pub id: &'static str,
    pub part: Part,
    pub title: String,
    pub intro: Vec<String>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub footer: Vec<String>,
}

/// µs with one decimal from ns.
pub fn us(ns: i64) -> String {
    format!("{:.1}", ns as f64 / 1e3)
}

/// Signed µs with one decimal from ns.
pub fn us_signed(ns: i64) -> String {
    format!("{:+.1}", ns as f64 / 1e3)
}

pub fn pct(value: Option<f64>) -> String {
    value.map_or("n/a".to_owned(), |v| format!("{v:.1}%"))
}

/// The line every format starts with.
pub fn headline(report: &Report) -> String {
    let c = &report.run.config;
    let repeats = if report.run.repeats > 1 {
        format!(", {} repeats", report.run.repeats)
    } else {
        String::new()
    };
    let blocks = if c.ping_blocks > 1 {
        format!(" in {} host/pod blocks", c.ping_blocks)
    } else {
        String::new()
    };
    // Polling CPUs change every RTT: the reader must not set these numbers against a run
    // whose CPUs halted between pings.
    let idle = match c.cpu_idle {
        CpuIdle::AsIs => "",
        CpuIdle::Poll => " polling when idle (--cpu-idle poll)",
    };
    format!(
        "netprof report: {} (kernel {}, {} CPUs{idle}; ping {} x {} ms{blocks}, iperf3 {} s, ab {} x {}{repeats})",
        report.source,
        report.run.kernel,
        report.run.cpus,
        c.ping_count,
        c.ping_interval_s * 1e3,
        c.iperf3_seconds,
        c.ab_requests,
        c.ab_concurrency
    )
}

/// The lines under the headline: each node's kernel and what measured each stage there.
pub fn measured_by(report: &Report) -> Vec<String> {
    report
        .measured_by
        .iter()
        .map(crate::report::mechanisms::line)
        .collect()
}

/// The title of the part measured with agents attached.
pub const WITH_AGENTS_TITLE: &str = "Measured with netprof's agents attached";
pub const WITH_AGENTS_INTRO: &str = "Everything below was measured while the agents were attached: netprof's own cost is inside these numbers. It is what the attribution above was made from.";

fn study_section(
    id: &'static str,
    part: Part,
    title: &str,
    intro: &str,
    cells: study::Cells,
) -> Section {
    Section {
        id,
        part,
        title: title.to_owned(),
        intro: vec![intro.to_owned()],
        header: cells.header.iter().map(|h| (*h).to_owned()).collect(),
        rows: cells.rows.iter().map(|r| r.to_vec()).collect(),
        footer: vec![cells.note],
    }
}

/// The study's tables: without agents first when the run has that twin.
fn study_sections(report: &Report) -> (Option<Section>, Section) {
    let repeats = if report.run.repeats > 1 {
        format!(" (median of {} repeats)", report.run.repeats)
    } else {
        String::new()
    };
    let side_by_side = match (report.clean_pings_side_by_side, report.clean_twins) {
        (Some(s), true) => format!(
            " Measured on clean twin labs, which no agent ever attached to, in the same run as the profile: all {} modes' labs and their twins were up at once and the twins' {} paths were pinged in turns with the profiled labs' ({} blocks each, every agent detached in the twins' blocks), so the p50s here and the profile saw the same stretches of the machine's speed; each twin's iperf3 and ab ran right beside its profiled lab's, with every agent detached.",
            s.modes, s.paths, s.blocks
        ),
        (Some(s), false) => format!(
            " All {} modes' labs were up at once and their {} paths were pinged in turns ({} blocks each), so every p50 here saw the same stretches of the machine's speed; iperf3 and ab ran one mode at a time.",
            s.modes, s.paths, s.blocks
        ),
        (None, _) => String::new(),
    };
    let clean = report.clean_table.as_ref().map(|_| {
        study_section(
            "clean-table",
            Part::Clean,
            &format!("The study's table, no agent attached{repeats}"),
            &format!(
                "The benchmarks as the study runs them, nothing of netprof loaded (DIR/clean/).{side_by_side}"
            ),
            study::cells(&report.clean_lines, report.host_mode_baseline),
        )
    });
    let profiled = study::cells(&report.profiled_lines, report.host_mode_baseline);
    let profiled_side_by_side = report.profiled_pings_side_by_side.map_or(String::new(), |s| {
        format!(
            " Here too all {} modes' labs were up at once and their {} paths pinged in turns ({} blocks each), each lab's agents attached only in its own blocks.",
            s.modes, s.paths, s.blocks
        )
    });
    let section = if clean.is_some() {
        study_section(
            "profiled-table",
            Part::WithAgents,
            "The study's table with the agents attached",
            &format!("The same benchmarks while netprof's agents profiled them: the difference to the table without agents is netprof's cost.{profiled_side_by_side}"),
            profiled,
        )
    } else {
        study_section(
            "profiled-table",
            Part::Clean,
            "The study's table, measured WITH netprof's agents attached",
            &format!("This run has no twin without agents (DIR/clean/, which `cargo xtask demo` writes): netprof's own cost is inside every number of this table.{profiled_side_by_side}"),
            profiled,
        )
    };
    (clean, section)
}

/// Every section, in order.
pub fn sections(report: &Report) -> Vec<Section> {
    let (clean_table, profiled_table) = study_sections(report);
    let has_clean = clean_table.is_some();
    let mut out = Vec::new();
    match clean_table {
        Some(t) => out.push(t),
        None => out.push(profiled_table.clone()),
    }
    out.extend(sections_latency::clean(report));
    out.extend(sections_latency::by_node(report));
    out.extend(sections_other::repeats(report));
    out.extend(sections_other::throughput(report));
    out.extend(sections_validation::sections(report));
    if has_clean {
        out.push(profiled_table);
    }
    out.extend(sections_latency::profiled(report));
    out.extend(sections_latency::p99(report));
    out.extend(sections_other::calibration(report));
    if !report.run.profiled.is_empty() {
        out.push(sections_other::drops(report));
        out.push(sections_other::overhead(report));
    }
    out
}

/// Renders rows as left-aligned text columns two spaces apart.
pub fn aligned(header: &[String], rows: &[Vec<String>]) -> String {
    use std::fmt::Write as _;
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&mut out, header);
    line(
        &mut out,
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    );
    for row in rows {
        line(&mut out, row);
    }
    out
}
