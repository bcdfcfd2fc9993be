//! The latency sections: the split of the delta without netprof (by stage, then by node), and
//! the profiled splits (p50 with netprof's share, p99).

use super::{pct, us, us_signed, Part, Section};
use crate::bench::cpu_idle::CpuIdle;
use crate::report::category::Category;
use crate::report::latency::{DetachedDelta, LatencyAttribution};
use crate::report::probe_cost::ProbeSource;
use crate::report::split::{Measure, Split, MIN_SHARE_DELTA_NS};
use crate::report::Report;
use crate::rundir::Node;

const UNEXPLAINED_NOTE: &str = "unexplained = measured delta − explained: never hidden, negative when the stages add up to more than was measured.";

const DETACHED_NOTE: &str = "The profiled pass also pinged every path with every agent detached, in blocks that took turns with the profiled ones: a delta with no netprof program in the path, measured in the same minutes as the profile. Unexplained against it is the split's own miss; the measured delta less it is how far the machine moved between the two passes, both without netprof.";

const DETACHED_TWINS_NOTE: &str = "The profiled pass also pinged every path with every agent detached, in blocks that took turns with the profiled ones: a delta with no netprof program in the path, on the profiled labs themselves. Unexplained against it is the split's own miss on those labs; the measured delta (the clean twins', in the same turns) less it is how far the twin labs and the profiled labs differ, both without netprof.";

/// An interval wider than this says the pings, not the split, limit what the delta can judge.
const WIDE_INTERVAL_NS: i64 = 20_000;
const WIDE_INTERVAL_NOTE: &str = "Some intervals are wider than 20 µs. With the CPUs left to halt between pings, waking one is part of every RTT, and on a shared machine that cost comes and goes in spells of a few hundred ms. `bench --cpu-idle poll` (the demo passes it on) keeps them polling: the delta of the datapath itself, without the wake-ups, repeats to a few µs (docs/lab.md).";
const INTERVAL_NOTE: &str = "95% interval of the measured delta: the clean pings' blocks resampled in pairs (block k of the mode's path with block k of the baseline's, pinged seconds apart; with repeats, each repeat's blocks apart, and the median taken as above). Where the explained sum lies inside it, the unexplained part is within what these pings can resolve, whatever its share.";

/// The measured delta's interval and whether the split lies inside it: rows only when some
/// mode has the interval.
fn interval_rows(report: &Report) -> Vec<Vec<String>> {
    if report
        .latency
        .iter()
        .all(|l| l.clean_delta_interval_ns.is_none())
    {
        return Vec::new();
    }
    let mut interval = vec!["measured delta, 95% interval".to_owned()];
    let mut inside = vec!["explained inside it".to_owned()];
    for l in &report.latency {
        match l.clean_delta_interval_ns {
            Some([lo, hi]) => {
                interval.push(format!("{}..{}", us_signed(lo), us_signed(hi)));
                let yes = (lo..=hi).contains(&l.clean.explained_ns);
                inside.push(if yes { "yes" } else { "no" }.to_owned());
            }
            None => {
                interval.push(String::new());
                inside.push(String::new());
            }
        }
    }
    vec![interval, inside]
}

/// Whether a run with the CPUs halting between pings gave some delta a wide interval.
fn wide_intervals(report: &Report) -> bool {
    report.run.config.cpu_idle == CpuIdle::AsIs
        && report.latency.iter().any(|l| {
            l.clean_delta_interval_ns
                .is_some_and(|[lo, hi]| hi - lo > WIDE_INTERVAL_NS)
        })
}

/// The headline split against the delta the profiled pass measured with the agents detached:
/// rows only for a report whose every mode has it.
fn detached_rows(report: &Report) -> Vec<Vec<String>> {
    let Some(all) = report
        .latency
        .iter()
        .map(|l| l.detached)
        .collect::<Option<Vec<DetachedDelta>>>()
    else {
        return Vec::new();
    };
    let row = |label: &str, f: &dyn Fn(&DetachedDelta) -> String| {
        let mut row = vec![label.to_owned()];
        row.extend(all.iter().map(f));
        row
    };
    let mut rows = vec![
        row("delta, agents detached (profiled pass)", &|d| {
            us_signed(d.delta_ns)
        }),
        row("unexplained against it", &|d| us_signed(d.unexplained_ns)),
    ];
    if all.iter().all(|d| d.between_passes_ns.is_some()) {
        let label = if report.clean_twins {
            "measured − detached (twins − profiled labs)"
        } else {
            "measured − detached (between passes)"
        };
        rows.push(row(label, &|d| {
            d.between_passes_ns.map_or_else(String::new, us_signed)
        }));
    }
    rows
}

fn share_note() -> String {
    format!(
        "Shares are n/a for a delta under {} µs (a percentile moves by a few µs from run to run).",
        MIN_SHARE_DELTA_NS / 1000
    )
}

/// The rows every split table has: stages, explained, unexplained, measured, shares.
fn split_rows(report: &Report, pick: fn(&LatencyAttribution) -> &Split) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = Category::ALL
        .iter()
        .map(|&stage| {
            let mut row = vec![stage.label().to_owned()];
            row.extend(
                report
                    .latency
                    .iter()
                    .map(|l| us_signed(pick(l).stage(stage))),
            );
            row
        })
        .collect();
    let first = pick(&report.latency[0]);
    let mut line = |label: String, f: &dyn Fn(&Split) -> String| {
        let mut row = vec![label];
        row.extend(report.latency.iter().map(|l| f(pick(l))));
        rows.push(row);
    };
    line("= explained".into(), &|s| us_signed(s.explained_ns));
    line("unexplained".into(), &|s| us_signed(s.unexplained_ns));
    line(
        format!("measured delta ({})", first.measure.label()),
        &|s| us_signed(s.delta_ns),
    );
    line("mode RTT".into(), &|s| us(s.mode_ns));
    line("baseline RTT".into(), &|s| us(s.baseline_ns));
    line("explained share".into(), &|s| pct(s.explained_pct));
    line("unexplained share".into(), &|s| pct(s.unexplained_pct));
    rows
}

fn header(report: &Report) -> Vec<String> {
    let mut header = vec!["stage".to_owned()];
    header.extend(report.latency.iter().map(|l| l.mode.clone()));
    header
}

fn sources(report: &Report) -> String {
    let mut all: Vec<ProbeSource> = report
        .latency
        .iter()
        .flat_map(|l| l.probes.sources.iter().copied())
        .collect();
    all.sort_by_key(|s| *s as u8);
    all.dedup();
    let words: Vec<&str> = all.iter().map(|s| s.label()).collect();
    words.join(" and ")
}

/// The headline: the delta without agents split by stage, net of netprof.
pub fn clean(report: &Report) -> Option<Section> {
    let first = report.latency.first()?;
    let detached = detached_rows(report);
    let interval = interval_rows(report);
    let measured = match first.clean.measure {
        Measure::CleanP50 if report.clean_twins => {
            "the p50s measured with no agent attached, on the clean twin labs in the same turns as the profile (DIR/clean/)"
        }
        Measure::CleanP50 => "the p50s measured with no agent attached (DIR/clean/)",
        _ => {
            "the profiled p50s less netprof's probes per RTT (this run has no twin without agents)"
        }
    };
    Some(Section {
        id: "latency",
        part: Part::Clean,
        title: "Where the extra p50 RTT goes, without netprof (µs per RTT)".to_owned(),
        intro: vec![
            format!("Baseline: {}. Measured delta: {measured}.", first.baseline),
            format!(
                "A stage's time: the sum over both nodes of {}, minus the baseline's. netprof's probe cost per run: {}.",
                first.clean.segment_time.explain(),
                sources(report)
            ),
        ],
        header: header(report),
        rows: split_rows(report, |l| &l.clean)
            .into_iter()
            .chain(interval.iter().cloned())
            .chain(detached.iter().cloned())
            .collect(),
        footer: [UNEXPLAINED_NOTE.to_owned(), share_note()]
            .into_iter()
            .chain((!interval.is_empty()).then(|| INTERVAL_NOTE.to_owned()))
            .chain(wide_intervals(report).then(|| WIDE_INTERVAL_NOTE.to_owned()))
            .chain((!detached.is_empty()).then(|| {
                let note = if report.clean_twins {
                    DETACHED_TWINS_NOTE
                } else {
                    DETACHED_NOTE
                };
                note.to_owned()
            }))
            .collect(),
    })
}

/// The same split by node, so an asymmetric cost shows where it is.
pub fn by_node(report: &Report) -> Option<Section> {
    report.latency.first()?;
    let mut header = vec!["stage".to_owned()];
    for l in &report.latency {
        for node in Node::BOTH {
            header.push(format!("{} {}", l.mode, node.name()));
        }
    }
    let mut rows: Vec<Vec<String>> = Category::ALL
        .iter()
        .map(|&stage| {
            let mut row = vec![stage.label().to_owned()];
            for l in &report.latency {
                let share = l.clean.stages.iter().find(|s| s.stage == stage);
                for node in Node::BOTH {
                    row.push(us_signed(share.map_or(0, |s| s.node(node))));
                }
            }
            row
        })
        .collect();
    let mut total = vec!["= explained".to_owned()];
    for l in &report.latency {
        for n in &l.clean.explained_by_node {
            total.push(us_signed(n.delta_ns));
        }
    }
    rows.push(total);
    Some(Section {
        id: "latency-nodes",
        part: Part::Clean,
        title: "The same split by node (µs per RTT)".to_owned(),
        intro: vec!["Node 1 holds the client pod, node 2 the server pod; each node's stage time is its own segments' (node 1's host path against node 1's pod path, and so on). A cost on one node only shows in that node's column.".to_owned()],
        header,
        rows,
        footer: vec![],
    })
}

fn interval_us(i: crate::report::calibration::Interval) -> String {
    if (i.hi - i.lo).abs() < 0.5 {
        us_signed(i.median.round() as i64)
    } else {
        format!(
            "{} ({}..{})",
            us_signed(i.median.round() as i64),
            us_signed(i.lo.round() as i64),
            us_signed(i.hi.round() as i64)
        )
    }
}

/// The split as profiled, with netprof's share of it.
pub fn profiled(report: &Report) -> Option<Section> {
    let first = report.latency.first()?;
    let mut rows = split_rows(report, |l| &l.profiled);
    let mut probes = vec!["of which netprof probes".to_owned()];
    probes.extend(
        report
            .latency
            .iter()
            .map(|l| interval_us(l.probes.delta_ns)),
    );
    rows.push(probes);
    let in_pass = report
        .latency
        .iter()
        .any(|l| l.probes.delta_before_in_pass_ns.is_some());
    if in_pass {
        let mut before = vec!["  (per-run costs alone)".to_owned()];
        before.extend(report.latency.iter().map(|l| {
            l.probes
                .delta_before_in_pass_ns
                .map_or("-".to_owned(), interval_us)
        }));
        rows.push(before);
    }
    let mut reuse = vec!["skb-reuse passes/RTT".to_owned()];
    reuse.extend(
        report
            .latency
            .iter()
            .map(|l| format!("{:.2}", l.reuse_passes + 0.0)),
    );
    rows.push(reuse);
    Some(Section {
        id: "latency-profiled",
        part: Part::WithAgents,
        title: "The extra p50 RTT as profiled, netprof included (µs per RTT)".to_owned(),
        intro: vec![format!(
            "Baseline: {}. A stage's time: the sum over both nodes of {}, minus the baseline's, against the profiled p50s.",
            first.baseline,
            first.profiled.segment_time.explain()
        )],
        header: header(report),
        rows,
        footer: vec![
            UNEXPLAINED_NOTE.to_owned(),
            format!("of which netprof probes: checkpoints passed per RTT × each kind's cost per run ({}), mode minus baseline, with the costs' interval: this much of the profiled delta and of the stage times above is netprof's own.", sources(report)),
        ]
        .into_iter()
        .chain(in_pass.then(|| "(per-run costs alone): the same from the calibration's (or bpf_stats') per-run costs, before the pass's own pings with the agents detached fixed their total; the calibration runs minutes away on another lab.".to_owned()))
        .collect(),
    })
}

/// The p99 split by stage means.
pub fn p99(report: &Report) -> Option<Section> {
    let first = report.latency.first()?;
    Some(Section {
        id: "latency-p99",
        part: Part::WithAgents,
        title: "The extra p99 RTT as profiled (µs per RTT)".to_owned(),
        intro: vec![format!(
            "Baseline: {}. A stage's time: the sum over both nodes of {}, minus the baseline's. Percentiles do not add: the residual is the tail no stage's average explains.",
            first.baseline,
            first.p99.segment_time.explain()
        )],
        header: header(report),
        rows: split_rows(report, |l| &l.p99),
        footer: vec![UNEXPLAINED_NOTE.to_owned(), share_note()],
    })
}
