//! `GET /metrics`: the agent's report in the Prometheus text exposition format (0.0.4).
//!
//! Every family gets its `# HELP` and `# TYPE` lines; label values are escaped (`\\`, `\"`,
//! `\n`); a label set appears once per family (duplicate names, which the report should not
//! have, are summed for counts and the busier segment wins for quantiles) so a scrape is never
//! rejected for duplicates. Numbers since start or the last `/v1/reset`, so the counters reset
//! with it, as Prometheus counters may.

use std::{collections::BTreeMap, fmt::Write};

use crate::agent::AgentReport;

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value as the format wants it (`NaN`, `+Inf`, `-Inf`, or a plain number).
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

fn family<'a>(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out, name }
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "{}", self.name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.out, " {}", format_value(value));
    }
}

/// One `(stage, from, to)` label set's numbers.
#[derive(Debug, Default)]
struct SegmentSample {
    count: u64,
    /// Count of the segment the quantiles come from.
    busiest: u64,
    p50_s: f64,
    p99_s: f64,
    mean_s: f64,
}

/// Renders the metrics; `None` when no agent is attached (only `netprof_agent_attached 0`).
pub fn render(report: Option<&AgentReport>) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "netprof_agent_attached",
        "gauge",
        "1 while the agent's checkpoints are attached, else 0.",
    )
    .sample(&[], if report.is_some() { 1.0 } else { 0.0 });
    let Some(report) = report else {
        return out;
    };
    family(
        &mut out,
        "netprof_agent_elapsed_seconds",
        "gauge",
        "Time covered by these numbers (since start or the last reset).",
    )
    .sample(&[], report.elapsed_s);

    let mut hits: BTreeMap<&str, u64> = BTreeMap::new();
    for cp in &report.checkpoints {
        *hits.entry(&cp.name).or_default() += cp.hits;
    }
    let mut f = family(
        &mut out,
        "netprof_checkpoint_hits_total",
        "counter",
        "Tracked packets seen at a checkpoint.",
    );
    for (name, count) in hits {
        f.sample(&[("checkpoint", name)], count as f64);
    }

    // (stage, from, to) -> the summed count and the busiest segment's quantiles.
    let mut segments: BTreeMap<(&str, &str, &str), SegmentSample> = BTreeMap::new();
    for s in &report.segments {
        let key = (s.stage.name(), s.from_name.as_str(), s.to_name.as_str());
        let entry = segments.entry(key).or_default();
        if s.count > entry.busiest {
            entry.busiest = s.count;
            entry.p50_s = s.p50_ns as f64 / 1e9;
            entry.p99_s = s.p99_ns as f64 / 1e9;
            entry.mean_s = s.mean_ns / 1e9;
        }
        entry.count += s.count;
    }
    type Pick = fn(&SegmentSample) -> f64;
    let series: [(&'static str, &str, Pick); 4] = [
        (
            "netprof_segment_count",
            "Packets timed over a segment (checkpoint to checkpoint).",
            |v| v.count as f64,
        ),
        (
            "netprof_segment_p50_seconds",
            "Median time over a segment.",
            |v| v.p50_s,
        ),
        (
            "netprof_segment_p99_seconds",
            "99th percentile time over a segment.",
            |v| v.p99_s,
        ),
        (
            "netprof_segment_mean_seconds",
            "Mean time over a segment.",
            |v| v.mean_s,
        ),
    ];
    for (name, help, pick) in series {
        let mut f = family(&mut out, name, "gauge", help);
        for ((stage, from, to), value) in &segments {
            f.sample(&[("stage", stage), ("from", from), ("to", to)], pick(value));
        }
    }

    let mut f = family(
        &mut out,
        "netprof_counter_total",
        "counter",
        "The datapath programs' own counters.",
    );
    // The counter names are the report's field names, so they cannot drift apart.
    if let Ok(serde_json::Value::Object(counters)) = serde_json::to_value(report.counters) {
        for (name, value) in counters {
            f.sample(
                &[("counter", &name)],
                value.as_u64().unwrap_or_default() as f64,
            );
        }
    }

    let mut drops: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for d in &report.drops {
        *drops
            .entry((&d.checkpoint_name, &d.reason_name))
            .or_default() += d.count;
    }
    let mut f = family(
        &mut out,
        "netprof_drops_total",
        "counter",
        "Tracked packets dropped, by the last checkpoint passed and the kernel's drop reason.",
    );
    for ((checkpoint, reason), count) in drops {
        f.sample(
            &[("checkpoint", checkpoint), ("reason", reason)],
            count as f64,
        );
    }

    let mut programs: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for p in &report.programs {
        let e = programs.entry(&p.name).or_default();
        e.0 += p.run_time_ns;
        e.1 += p.run_count;
    }
    let mut f = family(
        &mut out,
        "netprof_program_run_time_seconds_total",
        "counter",
        "Run time of the agent's eBPF programs (kernel bpf_stats).",
    );
    for (name, (ns, _)) in &programs {
        f.sample(&[("program", name)], *ns as f64 / 1e9);
    }
    let mut f = family(
        &mut out,
        "netprof_program_runs_total",
        "counter",
        "Runs of the agent's eBPF programs (kernel bpf_stats).",
    );
    for (name, (_, runs)) in &programs {
        f.sample(&[("program", name)], *runs as f64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{
        report::{CheckpointReport, Counters, DropReport, ProgramStats, SegmentReport},
        Stage, SCHEMA,
    };

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("two\nlines"), "two\\nlines");
        assert_eq!(
            escape_label("netprof-x-pod1:eth0 dev-rx"),
            "netprof-x-pod1:eth0 dev-rx"
        );
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(0.0000012), "0.0000012");
        assert_eq!(format_value(20.0), "20");
    }

    #[test]
    fn nothing_attached_is_one_gauge() {
        assert_eq!(
            render(None),
            "# HELP netprof_agent_attached 1 while the agent's checkpoints are attached, else 0.\n\
             # TYPE netprof_agent_attached gauge\nnetprof_agent_attached 0\n"
        );
    }

    fn checkpoint(name: &str, hits: u64) -> CheckpointReport {
        CheckpointReport {
            id: 1,
            name: name.into(),
            kind: "tc-ingress".into(),
            device: None,
            role: None,
            hook: None,
            priority: None,
            via: None,
            hits,
        }
    }

    fn segment(from: &str, to: &str, count: u64, p50_ns: u64) -> SegmentReport {
        SegmentReport {
            inbound: false,
            from: 1,
            to: 2,
            from_name: from.into(),
            to_name: to.into(),
            stage: Stage::Uplink,
            count,
            mean_ns: 2000.0,
            p50_ns,
            p90_ns: p50_ns,
            p99_ns: 4000,
            buckets: vec![],
        }
    }

    #[test]
    fn renders_every_family_with_exact_lines() {
        let report = AgentReport {
            schema: SCHEMA.into(),
            node: "n2".into(),
            netns: "netprof-x-node2".into(),
            kernel: "6.18".into(),
            attach_ms: 10.0,
            elapsed_s: 2.5,
            flows: Vec::new(),
            sample: 1,
            checkpoints: vec![
                checkpoint("eno1 tc-ingress", 20),
                checkpoint("we\"ird\\dev\nx", 3),
            ],
            segments: vec![
                segment("eno1 dev-rx", "eno1 tc-ingress", 20, 1500),
                segment("eno1 dev-rx", "eno1 tc-ingress", 5, 9000),
            ],
            counters: Counters {
                admitted: 40,
                retransmits: 1,
                ..Counters::default()
            },
            drops: vec![DropReport {
                checkpoint: 1,
                checkpoint_name: "eno1 tc-ingress".into(),
                reason: 2,
                reason_name: "NO_SOCKET".into(),
                count: 4,
            }],
            not_measured: vec![],
            programs: vec![ProgramStats {
                name: "cp_tc_in".into(),
                id: 7,
                run_count: 80,
                run_time_ns: 4_000,
                ns_per_run: 50.0,
            }],
            stats_s: None,
            duty: None,
        };
        let text = render(Some(&report));
        for line in [
            "# TYPE netprof_agent_attached gauge",
            "netprof_agent_attached 1",
            "netprof_agent_elapsed_seconds 2.5",
            "# HELP netprof_checkpoint_hits_total Tracked packets seen at a checkpoint.",
            "# TYPE netprof_checkpoint_hits_total counter",
            "netprof_checkpoint_hits_total{checkpoint=\"eno1 tc-ingress\"} 20",
            "netprof_checkpoint_hits_total{checkpoint=\"we\\\"ird\\\\dev\\nx\"} 3",
            "# TYPE netprof_segment_count gauge",
            // Two segments with the same names: counts add up, the busier one's quantiles win.
            "netprof_segment_count{stage=\"uplink\",from=\"eno1 dev-rx\",to=\"eno1 tc-ingress\"} 25",
            "netprof_segment_p50_seconds{stage=\"uplink\",from=\"eno1 dev-rx\",to=\"eno1 tc-ingress\"} 0.0000015",
            "netprof_segment_p99_seconds{stage=\"uplink\",from=\"eno1 dev-rx\",to=\"eno1 tc-ingress\"} 0.000004",
            "netprof_segment_mean_seconds{stage=\"uplink\",from=\"eno1 dev-rx\",to=\"eno1 tc-ingress\"} 0.000002",
            "# TYPE netprof_counter_total counter",
            "netprof_counter_total{counter=\"admitted\"} 40",
            "netprof_counter_total{counter=\"retransmits\"} 1",
            "netprof_counter_total{counter=\"slot_busy\"} 0",
            "netprof_drops_total{checkpoint=\"eno1 tc-ingress\",reason=\"NO_SOCKET\"} 4",
            "# TYPE netprof_program_run_time_seconds_total counter",
            "netprof_program_run_time_seconds_total{program=\"cp_tc_in\"} 0.000004",
            "netprof_program_runs_total{program=\"cp_tc_in\"} 80",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Every sample line belongs to a family declared just before, with HELP and TYPE.
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(Some(&name.to_owned()), declared.last(), "{line}");
            }
        }
        assert_eq!(text.matches("# HELP ").count(), declared.len());
    }
}
