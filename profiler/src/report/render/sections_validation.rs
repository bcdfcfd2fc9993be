//! The ground-truth checks of `bench --validate`.

use super::{us, us_signed, Part, Section};
use crate::report::Report;

fn within(error_pct: Option<f64>, tolerance_pct: f64) -> String {
    match error_pct {
        Some(e) if e.abs() <= tolerance_pct => "yes",
        Some(_) => "no",
        None => "n/a",
    }
    .to_owned()
}

pub fn sections(report: &Report) -> Vec<Section> {
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
        part: Part::Clean,
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
            part: Part::Clean,
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
            part: Part::WithAgents,
            title: format!("Services sweep on {}: the cost of kube-proxy rules", v.mode),
            intro: vec!["Extra Services (5 iptables rules each) in front of nginx's NodePort; a line fitted through the points gives the cost per rule.".to_owned()],
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows,
            footer,
        });
    }
    out
}
