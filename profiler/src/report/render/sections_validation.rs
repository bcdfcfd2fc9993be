//! The ground-truth checks of `bench --validate`: predicted against measured without agents.

use super::{us_signed, Part, Section};
use crate::report::validation::{Check, Comparison, Validation, Verdict};
use crate::report::Report;

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Within => "within",
        Verdict::Outside => "OUTSIDE",
    }
}

fn interval(c: &Comparison) -> String {
    c.interval_ns.map_or("n/a".to_owned(), |(lo, hi)| {
        format!("{}..{}", us_signed(lo), us_signed(hi))
    })
}

fn row(check: &Check, what: &str, c: &Comparison) -> Vec<String> {
    vec![
        check.check.name().to_owned(),
        what.to_owned(),
        us_signed(c.predicted_ns),
        us_signed(c.measured_ns),
        interval(c),
        format!("±{}", super::us(c.bound_ns)),
        c.error_pct
            .map_or("n/a".to_owned(), |e| format!("{e:+.0}%")),
        verdict(c.verdict).to_owned(),
    ]
}

/// Where a prediction comes from: its three largest (node, stage) parts.
fn largest(c: &Comparison) -> String {
    c.predicted_by
        .iter()
        .take(3)
        .map(|n| {
            format!(
                "{} on {} {}",
                n.stage.label(),
                n.node.name(),
                us_signed(n.ns)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn footer(v: &Validation) -> Vec<String> {
    let mut out = vec![format!(
        "a: the lab with the cost, b: without it. predicted: from the profiled run(s) only, per node and stage, net of netprof's probes (ping per RTT by segment medians, CPU per request by segment means). measured: with no agent attached, the median over {} interleaved rounds of each round's a − b (its 95% bootstrap interval beside it). Verdict: within ±{:.0}% of the prediction or ±{} µs, whichever is wider. CPU per request also holds what a stage costs the code around it (the cache lines conntrack's tables and entries take from every other stage), which no segment can show: in this lab about a quarter of what NOTRACK saves (perf, docs/report.md).",
        v.rounds,
        v.tolerance_pct,
        v.tolerance_floor_ns / 1000
    )];
    for c in &v.checks {
        out.push(format!(
            "{} (a: {}, b: {}; {}): predicted RTT gain from {}.",
            c.check.name(),
            c.mode_a,
            c.mode_b,
            c.what,
            largest(&c.rtt)
        ));
        let rounds: Vec<String> = c.rtt.by_round_ns.iter().map(|&ns| us_signed(ns)).collect();
        out.push(format!(
            "{}: measured RTT a − b per round (µs): {}.",
            c.check.name(),
            rounds.join(", ")
        ));
        if let Some(share) = c.right_place_pct {
            out.push(format!(
                "{}: {} rules on node 2; the prediction puts {share:.0}% of the measured gain in node 2's iptables filter stage.",
                c.check.name(),
                c.rules.map_or("the".to_owned(), |r| r.to_string()),
            ));
        }
    }
    for u in &v.unjudged {
        out.push(format!("{}: NOT JUDGED: {}.", u.check.name(), u.why));
    }
    out
}

pub fn sections(report: &Report) -> Vec<Section> {
    let Some(v) = &report.validation else {
        return Vec::new();
    };
    let header = [
        "check",
        "quantity",
        "predicted µs",
        "measured µs",
        "95% interval",
        "bound",
        "error",
        "verdict",
    ];
    let mut rows = Vec::new();
    for c in &v.checks {
        rows.push(row(c, "ping p50 RTT", &c.rtt));
        if let Some(cpu) = &c.cpu {
            rows.push(row(c, "CPU per request", cpu));
        }
    }
    vec![Section {
        id: "validation",
        part: Part::Clean,
        title: format!(
            "Ground truth: each check measured without agents ({} rounds, checks on {})",
            v.rounds, v.mode
        ),
        intro: vec!["Each check compares two states of the lab that differ by one thing. The attribution of the profiled run predicts what that thing costs; the rounds measure it with nothing of netprof loaded.".to_owned()],
        header: header.iter().map(|h| (*h).to_owned()).collect(),
        rows,
        footer: footer(v),
    }]
}
