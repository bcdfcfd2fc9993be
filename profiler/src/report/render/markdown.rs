//! `--format markdown`: the same sections as pipe tables (for issues, wikis, pull requests).

use std::fmt::Write as _;

use super::{headline, measured_by, sections, Part, WITH_AGENTS_INTRO, WITH_AGENTS_TITLE};
use crate::report::Report;

/// A cell safe inside a pipe table.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}", headline(report));
    for line in measured_by(report) {
        let _ = writeln!(out, "\n{}", cell(&line));
    }
    let mut part = Part::Clean;
    for section in sections(report) {
        if section.part != part {
            part = section.part;
            let _ = writeln!(out, "\n## {WITH_AGENTS_TITLE}\n\n{WITH_AGENTS_INTRO}");
        }
        let _ = writeln!(out, "\n### {}\n", section.title);
        for line in &section.intro {
            let _ = writeln!(out, "{line}\n");
        }
        if !section.rows.is_empty() {
            let header: Vec<String> = section.header.iter().map(|h| cell(h)).collect();
            let _ = writeln!(out, "| {} |", header.join(" | "));
            let _ = writeln!(out, "|{}", " --- |".repeat(header.len()));
            for row in &section.rows {
                let row: Vec<String> = row.iter().map(|c| cell(c)).collect();
                let _ = writeln!(out, "| {} |", row.join(" | "));
            }
            out.push('\n');
        }
        for line in &section.footer {
            let _ = writeln!(out, "{line}\n");
        }
    }
    let _ = writeln!(out, "\n## Notes\n");
    for note in &report.notes {
        let _ = writeln!(out, "- {note}");
    }
    out
}
