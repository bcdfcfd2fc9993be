//! The ping step: the paths being compared pinged in blocks that take turns (see
//! `ping_blocks`). The table's pod-over-host delta is the difference of two p50s; pinged one
//! path after the other, with iperf3 and ab in between, the two took different stretches of
//! the machine's speed (one repeat's host p50 was 6 µs against 34-39 µs in the others). The
//! targets are one mode's two paths, or every path of every mode when the modes' labs are up
//! side by side (`side_by_side`).

use super::{BenchError, PathContext};
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

/// The order of `targets` targets in block `block`: rotated by one per block, so each target
/// takes every place in turn and none always pings right after the same other one (with two,
/// they swap every block).
fn block_order(targets: usize, block: usize) -> Vec<usize> {
    (0..targets).map(|i| (i + block) % targets.max(1)).collect()
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
/// before and after each target's block; the reports come back in the order of `targets`.
pub(super) async fn ping_in_blocks(
    cfg: &BenchConfig,
    targets: &[Target<'_>],
    mut around: impl FnMut(Around) -> Result<(), BenchError>,
) -> Result<Vec<PingReport>, BenchError> {
    let blocks = blocks_for(cfg, targets.len());
    let mut runs: Vec<Vec<PingReport>> = vec![Vec::new(); targets.len()];
    for (b, &count) in blocks.iter().enumerate() {
        let block_cfg = BenchConfig {
            ping_count: count,
            ..cfg.clone()
        };
        for i in block_order(targets.len(), b) {
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
    Ok(runs.iter().map(|r| PingReport::concatenated(r)).collect())
}

/// One mode's paths pinged in turns, each block's agent reports written apart when agents
/// are attached.
pub(super) async fn ping_paths(
    ctx: &mut PathContext<'_>,
    paths: &[(NetPath, &PathEndpoints)],
) -> Result<Vec<PingReport>, BenchError> {
    let (progress, cfg, mode) = (ctx.progress, ctx.cfg, ctx.lab.mode());
    let each: Vec<String> = paths
        .iter()
        .map(|(path, e)| format!("{} {} -> {}", path.label(), e.client_netns, e.server_ip))
        .collect();
    let t = progress.step(&format!(
        "{}: {}",
        describe(cfg, paths.len()),
        each.join(", ")
    ));
    let targets: Vec<Target> = paths
        .iter()
        .map(|&(path, endpoints)| Target {
            mode,
            path,
            endpoints,
        })
        .collect();
    let mut flows = Vec::new();
    for (_, endpoints) in paths {
        flows.push(ctx.flows(endpoints, Tool::Ping)?);
    }
    let pings = ping_in_blocks(cfg, &targets, |at| match at {
        Around::Before(i) => ctx.follow(&flows[i]),
        Around::After(i, block) => ctx.after_part(paths[i].0, Tool::Ping, block),
    })
    .await
    .map_err(|e| progress.failed(e))?;
    let said: Vec<String> = paths
        .iter()
        .zip(&pings)
        .map(|((path, _), ping)| format!("{}: {}", path.label(), summary(ping)))
        .collect();
    progress.done(t, &said.join("; "));
    Ok(pings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_targets_take_every_place_in_turn() {
        assert_eq!(block_order(2, 0), [0, 1]);
        assert_eq!(block_order(2, 1), [1, 0]);
        assert_eq!(block_order(2, 2), [0, 1]);
        assert_eq!(block_order(1, 1), [0]);
        let firsts: Vec<usize> = (0..9).map(|b| block_order(9, b)[0]).collect();
        assert_eq!(firsts, (0..9).collect::<Vec<_>>());
    }

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
