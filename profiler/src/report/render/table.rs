//! `--format table`: aligned text for a terminal.

use std::fmt::Write as _;

use super::{aligned, headline, profiled_note, sections};
use crate::bench::table as study;
use crate::report::Report;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", headline(report));
    let _ = writeln!(out, "The study's table");
    out.push_str(&study::render(&report.results));
    if let Some(note) = profiled_note(report) {
        let _ = writeln!(out, "{note}");
    }
    for section in sections(report) {
        let _ = writeln!(out, "\n{}", section.title);
        for line in &section.intro {
            let _ = writeln!(out, "{line}");
        }
        if !section.rows.is_empty() {
            out.push_str(&aligned(&section.header, &section.rows));
        }
        for line in &section.footer {
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(out, "\nNotes");
    for note in &report.notes {
        let _ = writeln!(out, "- {note}");
    }
    out
}
