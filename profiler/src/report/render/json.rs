//! `--format json`: the [`Report`] as the versioned document `netprof.report/v1`
//! (docs/report-schema.md).

use crate::report::Report;

pub fn render(report: &Report) -> String {
    serde_json::to_string_pretty(report).expect("the report serializes") + "\n"
}
