//! `--format html`: one self-contained page (inline CSS and SVG, no scripts, no external URLs).

use crate::report::Report;

pub fn render(report: &Report) -> String {
    let _ = report;
    String::from("<!doctype html><title>netprof report</title>")
}
