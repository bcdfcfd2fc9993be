//! The report's formats. Text, Markdown and HTML render the same [`Section`]s (titles, cells,
//! notes) built once here, so the three never disagree; JSON is the [`Report`] itself.

pub mod html;
pub mod json;
pub mod markdown;
pub mod table;

use super::latency::{Category, LatencyAttribution, Split};
use super::Report;

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

/// One titled table with notes, format-neutral.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// Anchor / machine name.
    pub id: &'static str,
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

/// The header line every format starts with.
/// Said under the study's table when the agents were attached while it was measured.
pub fn profiled_note(report: &Report) -> Option<&'static str> {
    report.results.iter().any(|r| !r.profiles.is_empty()).then_some(
        "Measured with netprof's agents attached: their cost (see the agent's own cost below) is inside these numbers; `netprof bench` without --profile measures the modes without them.",
    )
}

pub fn headline(report: &Report) -> String {
    let c = &report.run.config;
    format!(
        "netprof report: {} (kernel {}, {} CPUs; ping {} x {} ms, iperf3 {} s, ab {} x {})",
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

fn latency_section(
    id: &'static str,
    report: &Report,
    pick: fn(&LatencyAttribution) -> &Split,
) -> Option<Section> {
    let first = report.latency.first()?;
    let split = pick(first);
    let mut header = vec!["stage".to_owned()];
    header.extend(report.latency.iter().map(|l| l.mode.clone()));
    let mut rows: Vec<Vec<String>> = Vec::new();
    for stage in Category::ALL {
        let mut row = vec![stage.label().to_owned()];
        row.extend(
            report
                .latency
                .iter()
                .map(|l| us_signed(pick(l).stage(stage))),
        );
        rows.push(row);
    }
    let mut line = |label: &str, f: &dyn Fn(&LatencyAttribution) -> String| {
        let mut row = vec![label.to_owned()];
        row.extend(report.latency.iter().map(f));
        rows.push(row);
    };
    line("= explained", &|l| us_signed(pick(l).explained_ns));
    line("unexplained", &|l| us_signed(pick(l).unexplained_ns));
    line("measured delta", &|l| us_signed(pick(l).delta_ns));
    line(&format!("mode RTT {}", split.statistic), &|l| {
        us(pick(l).mode_ns)
    });
    line(&format!("baseline RTT {}", split.statistic), &|l| {
        us(pick(l).baseline_ns)
    });
    line("explained share", &|l| pct(pick(l).explained_pct));
    line("unexplained share", &|l| pct(pick(l).unexplained_pct));
    if split.statistic == "p50" {
        line("of which netprof probes", &|l| us_signed(l.probe_delta_ns));
        line("skb-reuse passes/RTT", &|l| {
            format!("{:.2}", l.reuse_passes)
        });
    }
    let how = match split.segment_statistic {
        "median" => "each segment's median × passes per RTT",
        "median less probes" => "each segment's median less the probe runs at its two ends (half the mean run time of each end's kind during the ping step) × passes per RTT",
        _ => "each segment's mean × passes per RTT (percentiles do not add; the residual is the tail no stage's average explains)",
    };
    let title = if split.segment_statistic == "median less probes" {
        format!("Latency without netprof's own cost: extra ping RTT at p50 by stage, against the {} (µs per RTT)", split.statistic)
    } else {
        format!(
            "Latency: extra ping RTT at {} over the baseline, by stage (µs per RTT)",
            split.statistic
        )
    };
    Some(Section {
        id,
        title,
        intro: vec![format!(
            "Baseline: {}. Both nodes, both directions; a stage's time is {how}, minus the baseline's.",
            first.baseline
        )],
        header,
        rows,
        footer: {
            let mut footer = vec![format!(
                "unexplained = measured delta − explained; negative: the stages add up to more than was measured. Shares are n/a for a delta under {} µs (run-to-run swing).",
                crate::report::latency::MIN_SHARE_DELTA_NS / 1000
            )];
            if split.statistic == "p50 without agents" {
                footer.push("The stage times are the profiled run's, less netprof's probes; the measured p50s are the run without agents (DIR/clean/), minutes apart, so run-to-run swing is in the unexplained part too: an independent check of the split.".to_owned());
            }
            if split.statistic == "p50" {
                footer.push("of which netprof probes: checkpoints passed per RTT × each probe's mean run time during the ping steps themselves (bpf_stats, mode minus baseline). Pings 10 ms apart find cold caches, so a probe run costs several times what it does under load: this much of the delta, and of the stage times, is netprof's own. `cargo xtask demo` also writes DIR/clean/, the same benchmarks without agents.".to_owned());
            }
            footer
        },
    })
}

fn throughput_section(report: &Report) -> Option<Section> {
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
        title: "Throughput: nginx QPS predicted from per-request stage cost".to_owned(),
        intro: vec![
            format!(
                "Model: QPS ≈ cpus / cpu time per request ({} CPUs). Baseline: {}; its cpu time per request = cpus / its QPS.",
                first.cpus, first.baseline
            ),
            "extra = the mode's stage time per request minus the baseline's (segment mean × passes per request, both nodes); predicted QPS = cpus / (baseline µs/req + extra).".to_owned(),
        ],
        header: header.iter().map(|h| (*h).to_owned()).collect(),
        rows,
        footer: vec![
            "explained = extra / the cpu time per request the measured QPS drop implies (cpus / QPS − cpus / QPS_base). error = (predicted − measured) / measured. Segment time under load includes queueing, and the cores are not always all busy: a model, not a measurement.".to_owned(),
            "CPU µs/req: the machine's busy CPU time during ab / requests, measured (both lab nodes share one kernel; not on clusters); CPU explained = extra / (mode − base), the same prediction against a measurement instead of the model; QPS from CPU = baseline QPS × base / (base + extra), QPS scaling with 1 / CPU time per request at the baseline's busy share rather than with all cores busy.".to_owned(),
        ],
    })
}

fn drops_section(report: &Report) -> Section {
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

fn overhead_section(report: &Report) -> Section {
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
        title: "The agent's own cost (bpf_stats, whole mode)".to_owned(),
        intro: vec!["Run counts and run time of every netprof program from attach to the mode's last step; CPU share = run time / (time the steps covered × CPUs). The probes' time is inside the measured RTTs and segment times (see 'of which netprof probes'). 'attached' below 100% means duty-cycled agents (`--duty`): their counts cover that share of each step and per-event figures are scaled to the whole step. 'bpf_stats on' below 100%: statistics were sampled in slices of the attached time (they cost two clock reads per run); runs and run time are scaled up from them, ns/run is the slices' own.".to_owned()],
        header: header.iter().map(|h| (*h).to_owned()).collect(),
        rows,
        footer: vec![],
    }
}

/// "yes" when a prediction's error is within the tolerance, "no" outside, "n/a" without one.
fn within(error_pct: Option<f64>, tolerance_pct: f64) -> String {
    match error_pct {
        Some(e) if e.abs() <= tolerance_pct => "yes",
        Some(_) => "no",
        None => "n/a",
    }
    .to_owned()
}

fn validation_sections(report: &Report) -> Vec<Section> {
    let Some(v) = &report.validation else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let header = [
        "ablation",
        "removes",
        "predicted gain µs",
        "measured gain µs",
        "error",
        "within ±30%",
        "base p50 µs",
        "ablated p50 µs",
        "still seen µs",
        "added µs",
        "net predicted µs",
    ];
    let rows = v
        .checks
        .iter()
        .map(|c| {
            let removes: Vec<&str> = c.removes.iter().map(|s| s.name()).collect();
            vec![
                c.ablation.to_owned(),
                removes.join(", "),
                us_signed(c.predicted_gain_ns),
                us_signed(c.measured_gain_ns),
                c.error_pct
                    .map_or("n/a".to_owned(), |e| format!("{e:+.1}%")),
                within(c.error_pct, v.tolerance_pct),
                us(c.base_p50_ns),
                us(c.ablated_p50_ns),
                us(c.remaining_ns),
                us_signed(c.added_ns),
                us_signed(c.net_predicted_gain_ns),
            ]
        })
        .collect();
    let mut footer = vec![
        "predicted gain: from the base runs only (all rounds merged): the removed stages' per-RTT time (segment median × passes per RTT, both nodes); for NOTRACK only the part above each hook's empty-bracket floor, since its tables stay registered and probed. measured gain: the median over rounds of each round's base p50 − ablated p50 (a round's runs ran back to back, in rotating order; base and ablated p50 columns pool all rounds). The base has an empty raw table, so NOTRACK only adds its rules. still seen: the removed stages' time in the ablated runs' own profiles; added: stages the ablation brings that the base runs lacked; net predicted = predicted − added.".to_owned(),
    ];
    for c in &v.checks {
        if !c.measured_by_round_ns.is_empty() {
            let rounds: Vec<String> = c
                .measured_by_round_ns
                .iter()
                .map(|&ns| us_signed(ns))
                .collect();
            footer.push(format!(
                "{}: measured gain per round (µs): {}.",
                c.ablation,
                rounds.join(", ")
            ));
        }
        let mut parts: Vec<String> = c
            .predicted_by_stage
            .iter()
            .map(|p| format!("{} {}", p.stage.name(), us_signed(p.ns)))
            .collect();
        if c.hook_edge_probes_ns != 0 {
            parts.push(format!(
                "netprof's probes at the hooks' edges {}",
                us_signed(c.hook_edge_probes_ns)
            ));
        }
        footer.push(format!(
            "{}: predicted = {}.",
            c.ablation,
            parts.join(" + ")
        ));
        let mut changes: Vec<&crate::report::validation::CategoryChange> = c
            .profiled_change
            .iter()
            .filter(|x| (x.base_ns - x.ablated_ns).abs() >= 500)
            .collect();
        changes.sort_by_key(|x| x.ablated_ns - x.base_ns);
        let changes: Vec<String> = changes
            .iter()
            .map(|x| {
                format!(
                    "{} {} -> {} ({})",
                    x.stage.label(),
                    us(x.base_ns),
                    us(x.ablated_ns),
                    us_signed(x.ablated_ns - x.base_ns)
                )
            })
            .collect();
        if !changes.is_empty() {
            footer.push(format!(
                "{}: profiled stage time per RTT, base -> ablated (µs): {} (stage boundaries move where checkpoints disappear: without netfilter points, IP receive and forwarding fall into the device-to-device segments).",
                c.ablation,
                changes.join(", ")
            ));
        }
        if let Some(q) = &c.qps {
            footer.push(format!(
                "{} nginx (straight to the pod in both): QPS {:.0} -> measured {:.0} ({:+.1}%), predicted {:.0} ({:+.1}%) from {} µs less datapath time per request.",
                c.ablation,
                q.base_qps,
                q.ablated_qps,
                q.measured_change_pct,
                q.predicted_qps,
                q.predicted_change_pct,
                us(q.removed_ns_per_request)
            ));
        }
    }
    out.push(Section {
        id: "validation",
        title: format!("Counterfactual validation on {} ({} rounds, agents attached in every run)", v.mode, v.rounds),
        intro: vec!["Each ablation removes stages from the lab; the attribution of the base runs predicts how much p50 RTT that saves.".to_owned()],
        header: header.iter().map(|h| (*h).to_owned()).collect(),
        rows,
        footer,
    });
    let cpu_checks: Vec<(&str, &crate::report::validation::CpuCheck)> = v
        .checks
        .iter()
        .filter_map(|c| {
            c.qps
                .as_ref()
                .and_then(|q| q.cpu.as_ref())
                .map(|cpu| (c.ablation, cpu))
        })
        .collect();
    if !cpu_checks.is_empty() {
        let header = [
            "ablation",
            "predicted gain µs",
            "measured gain µs",
            "error",
            "within ±30%",
            "base µs",
            "ablated µs",
            "measured per round µs",
        ];
        let rows = cpu_checks
            .iter()
            .map(|(ablation, cpu)| {
                let rounds: Vec<String> = cpu
                    .measured_by_round_ns
                    .iter()
                    .map(|&ns| us_signed(ns))
                    .collect();
                vec![
                    (*ablation).to_owned(),
                    us_signed(cpu.predicted_gain_ns),
                    us_signed(cpu.measured_gain_ns),
                    cpu.error_pct
                        .map_or("n/a".to_owned(), |e| format!("{e:+.1}%")),
                    within(cpu.error_pct, v.tolerance_pct),
                    format!("{:.1}", cpu.base_ns / 1e3),
                    format!("{:.1}", cpu.ablated_ns / 1e3),
                    rounds.join(" "),
                ]
            })
            .collect();
        out.push(Section {
            id: "validation-cpu",
            title: format!("Counterfactual validation on {}: CPU time per nginx request", v.mode),
            intro: vec!["ab straight to the pod in base and ablated runs; the lab's two nodes share one kernel, so the machine's busy CPU time during ab per request is the whole datapath's cost of a request. The prediction is the removed stages' time per request (segment means × passes, both nodes; for NOTRACK above each hook's empty-bracket floor).".to_owned()],
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows,
            footer: vec!["measured gain: the median over rounds of each round's base minus ablated CPU time per request (a round's runs ran back to back).".to_owned()],
        });
    }
    let s = &v.sweep;
    if !s.points.is_empty() {
        let header = [
            "extra Services",
            "rules per node",
            "ab mean ms",
            "nginx QPS",
            "nat ns/request",
            "ping p50 ms",
        ];
        let rows = s
            .points
            .iter()
            .map(|p| {
                vec![
                    p.services.to_string(),
                    p.rules_per_node.to_string(),
                    format!("{:.3}", p.ab_mean_ms),
                    format!("{:.0}", p.qps),
                    format!("{:.0}", p.nat_ns_per_request),
                    p.ping_p50_ms
                        .map_or("no reply".to_owned(), |v| format!("{v:.3}")),
                ]
            })
            .collect();
        let mut footer = Vec::new();
        match &s.ab_mean_us_per_rule {
            Some(f) => footer.push(format!(
                "Per-rule cost from ab's mean latency: {:+.3} µs per rule per node ({:+.1} µs per 1000 rules; intercept {:.0} µs, r² {:.2}).",
                f.slope,
                f.slope * 1e3,
                f.intercept,
                f.r2
            )),
            None => footer.push("Per-rule cost: needs at least two different rule counts.".to_owned()),
        }
        if let Some(f) = &s.nat_ns_per_rule {
            footer.push(format!(
                "Per-rule cost from the measured iptables nat time: {:+.2} ns per rule per node per request (intercept {:.0} ns, r² {:.2}).",
                f.slope, f.intercept, f.r2
            ));
        }
        out.push(Section {
            id: "sweep",
            title: format!("Services sweep on {}: the cost of kube-proxy rules", v.mode),
            intro: vec!["Extra Services (5 iptables rules each) in front of nginx's NodePort; a line fitted through the points gives the cost per rule.".to_owned()],
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows,
            footer,
        });
    }
    out
}

/// The study's table measured without agents (`DIR/clean/`), when the run has it.
fn clean_table_section(report: &Report) -> Option<Section> {
    if report.clean_results.is_empty() {
        return None;
    }
    let cells = crate::bench::table::cells(&report.clean_results);
    Some(Section {
        id: "clean-table",
        title: "The study's table without agents (DIR/clean/)".to_owned(),
        intro: vec!["The same benchmarks run without netprof, for the numbers as the study would see them; the attribution below explains the profiled runs above, netprof's own cost included ('of which netprof probes').".to_owned()],
        header: cells.header.iter().map(|h| (*h).to_owned()).collect(),
        rows: cells.rows.iter().map(|r| r.to_vec()).collect(),
        footer: vec![cells.note],
    })
}

/// Every section after the study's table, in order.
pub fn sections(report: &Report) -> Vec<Section> {
    let mut out = Vec::new();
    out.extend(clean_table_section(report));
    out.extend(latency_section("latency-p50", report, |l| &l.p50));
    if !report.clean_results.is_empty() {
        out.extend(latency_section("latency-p50-net", report, |l| &l.p50_net));
    }
    out.extend(latency_section("latency-p99", report, |l| &l.p99));
    out.extend(throughput_section(report));
    if !report.run.profiled.is_empty() {
        out.push(drops_section(report));
        out.push(overhead_section(report));
    }
    out.extend(validation_sections(report));
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
