//! The ping step: the paths being compared pinged in blocks that take turns (see
//! `ping_blocks`). The table's pod-over-host delta is the difference of two p50s; pinged one
//! path after the other, with iperf3 and ab in between, the two took different stretches of
//! the machine's speed (one repeat's host p50 was 6 µs against 34-39 µs in the others). The
//! targets are one mode's two paths, or every path of every mode when the modes' labs are up
//! side by side (`side_by_side`).
//!
//! With agents, each path is also pinged with every netprof program detached, in blocks that
//! take turns with the profiled ones: the profiled p50 less this one is netprof's own RTT cost,
//! measured in the same minutes as the profile it is taken out of.

use super::{BenchError, PathContext};
use crate::bench::result::AgentsOffPings;
use crate::bench::{ping_blocks, tools, BenchConfig};
use crate::lab::{Mode, PathEndpoints};
use crate::parse::ping::PingReport;
use crate::rundir::{NetPath, Tool};

/// One path to ping.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target<'a> {
    pub mode: Mode,
    pub path: NetPath,
    pub endpoints: &'a PathEndpoints,
}

/// Before or after target `.0`'s ping in one block (`.1`: the block, when there are several).
pub(super) enum Around {
    Before(usize),
    After(usize, Option<usize>),
}

/// The blocks `targets` targets' pings take: taking turns needs two targets.
fn blocks_for(cfg: &BenchConfig, targets: usize) -> Vec<u32> {
    let blocks = if targets > 1 { cfg.ping_blocks } else { 1 };
    ping_blocks::split(cfg.ping_count, blocks)
}

pub(super) fn summary(ping: &PingReport) -> String {
    let stats = ping.stats.map_or("no replies".to_owned(), |s| {
        format!(
            "p50 {:.3} ms, avg {:.3} ms, p99 {:.3} ms",
            s.p50_ms, s.avg_ms, s.p99_ms
        )
    });
    format!("{stats}, {:.1}% loss", ping.loss_ratio() * 100.0)
}

/// "ping 200 x 10 ms each, in 10 alternating blocks".
pub(super) fn describe(cfg: &BenchConfig, targets: usize) -> String {
    let blocks = blocks_for(cfg, targets).len();
    let split = if blocks > 1 {
        format!(" each, in {blocks} alternating blocks")
    } else {
        String::new()
    };
    format!(
        "ping {} x {} ms{split}",
        cfg.ping_count,
        cfg.ping_interval_s * 1e3
    )
}

/// Pings every target (`cfg.ping_count` each) in blocks that take turns, calling `around`
/// before and after each target's block; each target's blocks come back in the order of
/// `targets`.
pub(super) async fn ping_in_blocks(
    cfg: &BenchConfig,
    targets: &[Target<'_>],
    mut around: impl FnMut(Around) -> Result<(), BenchError>,
) -> Result<Vec<Vec<PingReport>>, BenchError> {
    let blocks = blocks_for(cfg, targets.len());
    let mut runs: Vec<Vec<PingReport>> = vec![Vec::new(); targets.len()];
    for (b, &count) in blocks.iter().enumerate() {
        let block_cfg = BenchConfig {
            ping_count: count,
            ..cfg.clone()
        };
        for i in ping_blocks::order(targets.len(), b) {
            let t = targets[i];
            around(Around::Before(i))?;
            let ping = tools::ping(&t.endpoints.client_netns, t.endpoints.server_ip, &block_cfg)
                .await
                .map_err(|source| BenchError::Tool {
                    mode: t.mode,
                    step: format!("{}: ping", t.path.label()),
                    source,
                })?;
            around(Around::After(i, (blocks.len() > 1).then_some(b)))?;
            runs[i].push(ping);
        }
    }
    Ok(runs)
}

/// One path's pings from the ping step.
pub(super) struct PathPings {
    pub ping: PingReport,
    /// With agents: the same path pinged with them detached, in turns with `ping`'s blocks.
    pub agents_off: Option<AgentsOffPings>,
}

/// One mode's paths pinged in turns, each block's agent reports written apart when agents
/// are attached; with agents, every path is pinged a second time with them detached, these
/// blocks in the same turns (the agents re-attach before each profiled block).
pub(super) async fn ping_paths(
    ctx: &mut PathContext<'_>,
    paths: &[(NetPath, &PathEndpoints)],
) -> Result<Vec<PathPings>, BenchError> {
    let (progress, cfg, mode) = (ctx.progress, ctx.cfg, ctx.lab.mode());
    let with_agents_off = ctx.profiled();
    let each: Vec<String> = paths
        .iter()
        .map(|(path, e)| format!("{} {} -> {}", path.label(), e.client_netns, e.server_ip))
        .collect();
    let mut targets: Vec<Target> = paths
        .iter()
        .map(|&(path, endpoints)| Target {
            mode,
            path,
            endpoints,
        })
        .collect();
    // Targets `n..2n` are the same paths with the agents detached.
    let n = targets.len();
    if with_agents_off {
        targets.extend_from_within(..);
    }
    let off_note = if with_agents_off {
        ", with agents attached and detached in turns"
    } else {
        ""
    };
    let t = progress.step(&format!(
        "{}{off_note}: {}",
        describe(cfg, targets.len()),
        each.join(", ")
    ));
    let mut flows = Vec::new();
    for (_, endpoints) in paths {
        flows.push(ctx.flows(endpoints, Tool::Ping)?);
    }
    let pings = ping_in_blocks(cfg, &targets, |at| match at {
        Around::Before(i) if i < n => {
            ctx.set_attached(true)?;
            ctx.follow(&flows[i])
        }
        Around::Before(_) => ctx.set_attached(false),
        Around::After(i, block) if i < n => ctx.after_part(paths[i].0, Tool::Ping, block),
        Around::After(..) => Ok(()),
    })
    .await
    .map_err(|e| progress.failed(e))?;
    // The steps after the ping step are profiled.
    ctx.set_attached(true).map_err(|e| progress.failed(e))?;
    let (profiled, off) = pings.split_at(n);
    let results: Vec<PathPings> = profiled
        .iter()
        .enumerate()
        .map(|(i, on)| PathPings {
            ping: PingReport::concatenated(on),
            agents_off: off.get(i).map(|off| AgentsOffPings::from_blocks(on, off)),
        })
        .collect();
    let said: Vec<String> = paths
        .iter()
        .zip(&results)
        .map(|((path, _), p)| {
            let off = p.agents_off.as_ref().map_or(String::new(), |off| {
                format!(" (agents detached: {})", summary(&off.ping))
            });
            format!("{}: {}{off}", path.label(), summary(&p.ping))
        })
        .collect();
    progress.done(t, &said.join("; "));
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_target_pings_in_one_piece() {
        let cfg = BenchConfig::default();
        assert_eq!(blocks_for(&cfg, 1), [cfg.ping_count]);
        let blocks = blocks_for(&cfg, 2);
        assert_eq!(blocks.len(), cfg.ping_blocks as usize);
        assert_eq!(blocks.iter().sum::<u32>(), cfg.ping_count);
        let one_piece = BenchConfig {
            ping_blocks: 1,
            ..cfg
        };
        assert_eq!(blocks_for(&one_piece, 2), [one_piece.ping_count]);
    }
}
