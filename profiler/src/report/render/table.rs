//! `--format table`: aligned text for a terminal.

use std::fmt::Write as _;

use super::{aligned, headline, measured_by, sections, Part, WITH_AGENTS_INTRO, WITH_AGENTS_TITLE};
use crate::report::Report;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", headline(report));
    for line in measured_by(report) {
        let _ = writeln!(out, "{line}");
    }
    let mut part = Part::Clean;
    for section in sections(report) {
        if section.part != part {
            part = section.part;
            let rule = "=".repeat(WITH_AGENTS_TITLE.chars().count());
            let _ = writeln!(
                out,
                "\n{rule}\n{WITH_AGENTS_TITLE}\n{rule}\n{WITH_AGENTS_INTRO}"
            );
        }
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
