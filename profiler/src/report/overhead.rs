//! The agent's own cost, from the kernel's bpf_stats: run counts and run time per program.
//! The counters run from attach to the mode's last step (they are not reset between steps), so
//! a node's last report holds the whole mode; the CPU share divides that run time by the time
//! the steps covered on all CPUs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::agent::report::ProgramStats;

use super::input::{ModeInput, Profile};
use crate::rundir::{NetPath, Node, Tool};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgramCost {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub ns_per_run: f64,
}

/// One node's agent over one mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeOverhead {
    pub mode: String,
    pub node: Node,
    pub programs: Vec<ProgramCost>,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub ns_per_run: f64,
    /// Seconds the steps covered (sum of the reports' `elapsed_s`).
    pub covered_s: f64,
    /// `run_time / (covered_s × cpus)`, percent of the machine's CPU time.
    pub cpu_pct: f64,
    /// Mean load + attach time, ms.
    pub attach_ms: f64,
    /// Share of the steps the programs were attached (below 100 with `--duty`), %.
    pub attached_pct: f64,
    /// Share of the attached time bpf_stats were on, %: the run counts and times above are
    /// scaled up from it (100: counted throughout).
    pub stats_pct: f64,
}

/// The checkpoint kind a program serves (`None` for drop/retransmit tracing).
pub fn program_kind(name: &str) -> Option<&'static str> {
    match name {
        "cp_dev_rx" => Some("dev-rx"),
        "cp_tc_ingress" | "cp_tc_pod_in" | "cp_tc_upl_in" => Some("tc-ingress"),
        "cp_tc_egress" | "cp_tc_pod_eg" | "cp_tc_upl_eg" => Some("tc-egress"),
        "cp_dev_tx" => Some("dev-tx"),
        "cp_backlog" => Some("backlog"),
        // Both end journeys (the report's `consumed` checkpoint).
        "cp_consume_skb" | "cp_consume_btf" | "cp_kfree_skb" | "cp_kfree_btf" => Some("consumed"),
        // Admission runs inside the checkpoint that tail-calls it (its runs are the caller's).
        "nf_admit" => None,
        n if n.starts_with("nf_") || n.starts_with("cp_fe_") || n.starts_with("cp_fx_") => {
            Some("netfilter")
        }
        _ => None,
    }
}

fn last_programs(mode: &ModeInput, node: Node) -> Option<&[ProgramStats]> {
    mode.profiles
        .iter()
        .rev()
        .find(|p| p.file.node == node)
        .map(|p| p.report.programs.as_slice())
}

pub fn node_overhead(mode: &ModeInput, node: Node, cpus: usize) -> Option<NodeOverhead> {
    let programs = last_programs(mode, node)?;
    let reports: Vec<_> = mode
        .profiles
        .iter()
        .filter(|p| p.file.node == node)
        .collect();
    let covered_s: f64 = reports.iter().map(|p| p.report.elapsed_s).sum();
    let attached_s: f64 = reports
        .iter()
        .map(|p| p.report.elapsed_s * p.report.attached_fraction())
        .sum();
    let attach_ms =
        reports.iter().map(|p| p.report.attach_ms).sum::<f64>() / reports.len().max(1) as f64;
    let scale = stats_scale(reports.iter().map(|p| {
        (
            p.report.elapsed_s * p.report.attached_fraction(),
            p.report.stats_s,
        )
    }));
    let scaled = |v: u64| (v as f64 * scale).round() as u64;
    let run_count: u64 = programs.iter().map(|p| scaled(p.run_count)).sum();
    let run_time_ns: u64 = programs.iter().map(|p| scaled(p.run_time_ns)).sum();
    Some(NodeOverhead {
        mode: mode.mode().to_string(),
        node,
        programs: programs
            .iter()
            .map(|p| ProgramCost {
                name: p.name.clone(),
                run_count: scaled(p.run_count),
                run_time_ns: scaled(p.run_time_ns),
                ns_per_run: p.ns_per_run,
            })
            .collect(),
        run_count,
        run_time_ns,
        ns_per_run: if run_count > 0 {
            run_time_ns as f64 / run_count as f64
        } else {
            0.0
        },
        covered_s,
        cpu_pct: if covered_s > 0.0 {
            run_time_ns as f64 / (covered_s * 1e9 * cpus.max(1) as f64) * 100.0
        } else {
            0.0
        },
        attach_ms,
        attached_pct: if covered_s > 0.0 {
            attached_s / covered_s * 100.0
        } else {
            100.0
        },
        stats_pct: 100.0 / scale,
    })
}

/// How much the programs' counters undercount the attached time, from each report's attached
/// seconds and seconds with bpf_stats on (`None`: on throughout, as before sampling): always
/// attached agents sample statistics in slices, so their counts cover only those.
fn stats_scale(reports: impl Iterator<Item = (f64, Option<f64>)>) -> f64 {
    let (attached_s, stats_s) = reports.fold((0.0, 0.0), |(a, s), (attached, stats)| {
        (a + attached, s + stats.unwrap_or(attached))
    });
    if stats_s > 0.0 && attached_s > stats_s {
        attached_s / stats_s
    } else {
        1.0
    }
}

/// One step's own program runs on one node: bpf_stats count from each program's load, and in a
/// lab run one agent (one load) serves every step of a mode, so the previous report's figures of
/// the same program (same id) are taken off. A step profiled in blocks has a report per block,
/// each after another step's block: the blocks' own runs are added up. Agents loaded per step
/// (Kubernetes runs) have nothing to take off.
fn step_programs(
    profiles: &[Profile],
    node: Node,
    path: NetPath,
    tool: Tool,
) -> Vec<(String, u64, u64)> {
    let reports: Vec<&Profile> = profiles.iter().filter(|p| p.file.node == node).collect();
    // By program id, in the order first seen.
    let mut runs: Vec<(u32, String, u64, u64)> = Vec::new();
    for (at, report) in reports.iter().enumerate() {
        if !(report.file.path == path && report.file.tool == tool) {
            continue;
        }
        let before: &[ProgramStats] = if at > 0 {
            &reports[at - 1].report.programs
        } else {
            &[]
        };
        for p in &report.report.programs {
            let (count, time) = before.iter().find(|b| b.id == p.id).map_or((0, 0), |b| {
                (
                    b.run_count.min(p.run_count),
                    b.run_time_ns.min(p.run_time_ns),
                )
            });
            let (c, t) = (p.run_count - count, p.run_time_ns - time);
            match runs.iter_mut().find(|r| r.0 == p.id) {
                Some(r) => {
                    r.2 += c;
                    r.3 += t;
                }
                None => runs.push((p.id, p.name.clone(), c, t)),
            }
        }
    }
    runs.into_iter()
        .map(|(_, name, count, time)| (name, count, time))
        .collect()
}

/// Mean run time per checkpoint kind over both nodes, during one step (`path`, `tool`), ns.
/// Per step because a probe's cost depends on the traffic: pings 10 ms apart find cold caches
/// and cost several times what the same programs cost under ab's load.
pub fn probe_ns_by_kind(profiles: &[Profile], path: NetPath, tool: Tool) -> BTreeMap<String, f64> {
    let mut totals: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    for node in Node::BOTH {
        for (name, count, time) in step_programs(profiles, node, path, tool) {
            if let Some(kind) = program_kind(&name) {
                let t = totals.entry(kind).or_default();
                t.0 += count;
                t.1 += time;
            }
        }
    }
    totals
        .into_iter()
        .filter(|(_, (count, _))| *count > 0)
        .map(|(kind, (count, time))| (kind.to_owned(), time as f64 / count as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_statistics_scale_to_the_attached_time() {
        // Two steps of 4 s and 2 s, statistics on 10% of each.
        let scale = stats_scale([(4.0, Some(0.4)), (2.0, Some(0.2))].into_iter());
        assert!((scale - 10.0).abs() < 1e-9, "{scale}");
        // Documents from before sampling (on throughout), and duty windows (statistics on in
        // every window, programs attached only then): nothing to scale.
        assert_eq!(
            stats_scale([(4.0, None), (0.2, Some(0.2))].into_iter()),
            1.0
        );
        assert_eq!(stats_scale(std::iter::empty()), 1.0);
    }
}
