//! Throughput, repeats, the calibration, drops and the agents' own cost.

use super::{pct, us_signed, Part, Section};
use crate::report::category::Category;
use crate::report::Report;

/// Throughput: QPS predicted from per-request stage cost.
pub fn throughput(report: &Report) -> Option<Section> {
    let first = report.throughput.first()?;
    let header = [
        "mode",
        "baseline QPS",
        "baseline µs/req",
        "extra µs/req",
        "predicted QPS",
        "measured QPS",
        "error",
        "explained",
        "CPU µs/req base -> mode",
        "CPU explained",
        "QPS from CPU (error)",
        "packets/req",
        "top stages µs/req",
    ];
    let rows = report
        .throughput
        .iter()
        .map(|t| {
            let mut top: Vec<(Category, i64)> = t
                .split
                .stages
                .iter()
                .map(|s| (s.stage, s.delta_ns))
                .filter(|(_, d)| *d != 0)
                .collect();
            top.sort_by_key(|(_, d)| -d.abs());
            let top: Vec<String> = top
                .iter()
                .take(3)
                .map(|(c, d)| format!("{} {}", c.label(), us_signed(*d)))
                .collect();
            vec![
                t.mode.clone(),
                format!("{:.0}", t.baseline_qps),
                format!("{:.1}", t.baseline_cpu_us_per_request),
                us_signed(t.extra_ns_per_request),
                format!("{:.0}", t.predicted_qps),
                format!("{:.0}", t.measured_qps),
                format!("{:+.1}%", t.prediction_error_pct),
                pct(t.split.explained_pct),
                t.cpu.map_or("n/a".to_owned(), |c| {
                    format!("{:.1} -> {:.1}", c.baseline_ns / 1e3, c.mode_ns / 1e3)
                }),
                pct(t.cpu.and_then(|c| c.explained_pct)),
                t.cpu.map_or("n/a".to_owned(), |c| {
                    format!(
                        "{:.0} ({})",
                        c.predicted_qps,
                        c.prediction_error_pct
                            .map_or("n/a".to_owned(), |e| format!("{e:+.1}%"))
                    )
                }),
                format!("{:.1}", t.packets_per_request),
                top.join(", "),
            ]
        })
        .collect();
    Some(Section {
        id: "throughput",
        part: Part::Clean,
        title: if first.measured_without_agents {
            "Throughput: nginx QPS without agents, predicted from per-request stage cost".to_owned()
        } else {
            "Throughput: nginx QPS (measured with agents) predicted from per-request stage cost".to_owned()
        },
        intro: vec![
            format!(
                "Model: QPS ≈ cpus / cpu time per request ({} CPUs). Baseline: {}; its cpu time per request = cpus / its QPS.",
                first.cpus, first.baseline
            ),
            "extra = the mode's stage time per request minus the baseline's (per node, segment mean less netprof's probe × passes per request); predicted QPS = cpus / (baseline µs/req + extra).".to_owned(),
        ],
        header: header.iter().map(|h| (*h).to_owned()).collect(),
        rows,
        footer: vec![
            "explained = extra / the cpu time per request the measured QPS drop implies (cpus / QPS − cpus / QPS_base). error = (predicted − measured) / measured. Segment time under load includes queueing (the receive backlog's wait, pure queueing, is left out), and the cores are not always all busy: a model, not a measurement.".to_owned(),
            "CPU µs/req: the machine's busy CPU time during ab / requests, measured (both lab nodes share one kernel; not on clusters); CPU explained = extra / (mode − base), the same prediction against a measurement instead of the model; QPS from CPU = baseline QPS × base / (base + extra), QPS scaling with 1 / CPU time per request at the baseline's busy share rather than with all cores busy.".to_owned(),
        ],
    })
}

/// The clean split's spread over repeats.
pub fn repeats(report: &Report) -> Option<Section> {
    let r = report.repeats.as_ref()?;
    let mut header = vec!["stage".to_owned()];
    header.extend(r.modes.iter().map(|m| m.mode.clone()));
    let cell = |median: i64, min: i64, max: i64| {
        format!(
            "{} [{}..{}]",
            us_signed(median),
            us_signed(min),
            us_signed(max)
        )
    };
    let range = |v: &[i64]| {
        let mut s = v.to_vec();
        s.sort_unstable();
        (
            crate::report::split::median_i64(s.clone()),
            *s.first().unwrap_or(&0),
            *s.last().unwrap_or(&0),
        )
    };
    let mut rows: Vec<Vec<String>> = Category::ALL
        .iter()
        .map(|&c| {
            let mut row = vec![c.label().to_owned()];
            row.extend(r.modes.iter().map(|m| {
                let s = m
                    .stages
                    .iter()
                    .find(|s| s.stage == c)
                    .expect("every category");
                cell(s.median, s.min, s.max)
            }));
            row
        })
        .collect();
    let mut line = |label: &str, f: &dyn Fn(&crate::report::repeats::ModeSpread) -> String| {
        let mut row = vec![label.to_owned()];
        row.extend(r.modes.iter().map(f));
        rows.push(row);
    };
    line("= explained", &|m| {
        let (med, lo, hi) = range(&m.explained_by_repeat);
        cell(med, lo, hi)
    });
    line("measured delta", &|m| {
        let (med, lo, hi) = range(&m.delta_by_repeat);
        cell(med, lo, hi)
    });
    if r.modes
        .iter()
        .all(|m| m.detached_delta_by_repeat.iter().all(Option::is_some))
    {
        line("delta, agents detached", &|m| {
            let by_repeat: Vec<i64> = m
                .detached_delta_by_repeat
                .iter()
                .flatten()
                .copied()
                .collect();
            let (med, lo, hi) = range(&by_repeat);
            cell(med, lo, hi)
        });
    }
    line("unexplained share per repeat", &|m| {
        m.unexplained_pct_by_repeat
            .iter()
            .map(|p| pct(*p))
            .collect::<Vec<_>>()
            .join(" ")
    });
    line("unexplained share of the medians", &|m| {
        pct(m.unexplained_pct_of_medians)
    });
    Some(Section {
        id: "repeats",
        part: Part::Clean,
        title: format!(
            "Repeatability: the split without netprof over {} repeats (µs per RTT, median [min..max])",
            r.count
        ),
        intro: vec![format!("{} The split above takes, per node and stage, the median over the repeats of the mode's and the baseline's time, and as its measured delta the median mode RTT less the median baseline RTT (the table without agents' own cells); the 'measured delta' row here is each repeat's own delta, whose median can differ when one repeat's baseline is an outlier.", if report.clean_twins {
            "Each repeat ran every mode profiled beside its clean twin, in the same turns."
        } else {
            "Each repeat ran every mode without agents and profiled, in alternating order."
        })],
        header,
        rows,
        footer: vec![],
    })
}

/// Where netprof's in-path cost per probe run came from.
pub fn calibration(report: &Report) -> Option<Section> {
    let c = report.calibration.as_ref()?;
    let rows = c
        .followed_ns
        .iter()
        .map(|(kind, i)| {
            vec![
                kind.clone(),
                format!("{:.0}", i.median),
                format!("{:.0}..{:.0}", i.lo, i.hi),
            ]
        })
        .collect();
    Some(Section {
        id: "calibration",
        part: Part::WithAgents,
        title: "netprof's in-path cost per probe run (calibration)".to_owned(),
        intro: vec![format!(
            "From {} ({}{}{}{}): measured by interleaving runs without programs, with programs that only return and with netprof. The ping RTT's p50 moved by {:+.1} µs ({:+.1}..{:+.1}) with netprof attached.",
            c.file,
            c.mode.as_deref().unwrap_or("mode not given"),
            c.rounds.map_or(String::new(), |r| format!(", {r} rounds")),
            c.ping_interval_ms
                .map_or(String::new(), |ms| format!(", pings {ms} ms apart")),
            c.stats_share
                .map_or(String::new(), |s| format!(", bpf_stats on {s}% of the time")),
            c.rtt_shift_ns.median / 1e3,
            c.rtt_shift_ns.lo / 1e3,
            c.rtt_shift_ns.hi / 1e3
        )]
        .into_iter()
        .chain(c.ratios.map(|r| {
            format!(
                "Against no programs, round by round: the ping p50 was {:.2}x ({:.2}..{:.2}) with the programs held at their hooks (each returning at once: the hooks' dispatch alone) and {:.2}x ({:.2}..{:.2}) with netprof.",
                r.held_rtt.median,
                r.held_rtt.lo,
                r.held_rtt.hi,
                r.netprof_rtt.median,
                r.netprof_rtt.lo,
                r.netprof_rtt.hi
            )
        }))
        .collect(),
        header: ["checkpoint kind", "ns per run (followed packet)", "interval"]
            .iter()
            .map(|h| (*h).to_owned())
            .collect(),
        rows,
        footer: vec![],
    })
}

/// Drops and retransmits by place and reason.
pub fn drops(report: &Report) -> Section {
    let header = [
        "mode",
        "path",
        "tool",
        "after checkpoint",
        "reason",
        "count",
    ];
    let mut rows = Vec::new();
    // Expected endings, totalled per reason over every step.
    let mut expected: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for step in &report.drops {
        for d in &step.drops {
            match d.expected {
                Some(why) => *expected.entry((d.reason.as_str(), why)).or_default() += d.count,
                None => rows.push(vec![
                    step.mode.clone(),
                    step.path.label().to_owned(),
                    step.tool.name().to_owned(),
                    d.after.clone(),
                    d.reason.clone(),
                    d.count.to_string(),
                ]),
            }
        }
    }
    let mut footer: Vec<String> = expected
        .iter()
        .map(|((reason, why), count)| format!("Not losses: {count} × {reason} ({why})."))
        .collect();
    let retrans: Vec<String> = report
        .drops
        .iter()
        .filter(|s| {
            s.retransmits > 0
                || s.iperf3_retransmits.unwrap_or(0) > 0
                || s.ping_lost.unwrap_or(0) > 0
        })
        .map(|s| {
            let mut parts = vec![format!("{} tcp retransmits", s.retransmits)];
            if let Some(r) = s.iperf3_retransmits {
                parts.push(format!("iperf3 says {r}"));
            }
            if let Some(l) = s.ping_lost {
                parts.push(format!("{l} pings lost"));
            }
            format!("{} {} {}: {}", s.mode, s.path, s.tool, parts.join(", "))
        })
        .collect();
    if retrans.is_empty() {
        footer.push("Retransmits: none on any profiled step.".to_owned());
    } else {
        footer.push(format!("Retransmits and losses: {}.", retrans.join("; ")));
    }
    Section {
        id: "drops",
        part: Part::WithAgents,
        title: "Drops and retransmits by place and reason (both nodes)".to_owned(),
        intro: vec![if rows.is_empty() {
            "No tracked packet was lost.".to_owned()
        } else {
            "Tracked packets freed as drops: the last checkpoint they passed and the kernel's drop reason (a packet freed on the other node is counted there, once).".to_owned()
        }],
        header: header.iter().map(|h| (*h).to_owned()).collect(),
        rows,
        footer,
    }
}

/// The agents' own cost from bpf_stats.
pub fn overhead(report: &Report) -> Section {
    let header = [
        "mode",
        "node",
        "program runs",
        "run time ms",
        "ns/run",
        "CPU share",
        "attach ms",
        "attached",
        "bpf_stats on",
    ];
    let rows = report
        .overhead
        .iter()
        .map(|o| {
            vec![
                o.mode.clone(),
                o.node.name().to_owned(),
                o.run_count.to_string(),
                format!("{:.1}", o.run_time_ns as f64 / 1e6),
                format!("{:.0}", o.ns_per_run),
                format!("{:.2}%", o.cpu_pct),
                format!("{:.0}", o.attach_ms),
                format!("{:.0}%", o.attached_pct),
                format!("{:.0}%", o.stats_pct),
            ]
        })
        .collect();
    Section {
        id: "overhead",
        part: Part::WithAgents,
        title: "The agent's own cost (bpf_stats, whole mode)".to_owned(),
        intro: vec!["Run counts and run time of every netprof program from attach to the mode's last step; CPU share = run time / (time the steps covered × CPUs). The probes' time is inside the profiled RTTs and segment times (see 'of which netprof probes'); these run times are a side column, the in-path cost comes from the calibration when there is one. 'attached' below 100% means duty-cycled agents (`--duty`): their counts cover that share of each step and per-event figures are scaled to the whole step. 'bpf_stats on' below 100%: statistics were sampled in slices of the attached time (they cost two clock reads per run); runs and run time are scaled up from them, ns/run is the slices' own.".to_owned()],
        header: header.iter().map(|h| (*h).to_owned()).collect(),
        rows,
        footer: vec![],
    }
}
