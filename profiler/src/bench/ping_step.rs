//! A mode's ping step: the host path's and the pod path's pings in blocks that alternate
//! between the two paths (see `ping_blocks`). The table's pod-over-host delta is the difference
//! of two p50s; pinged one path after the other, with iperf3 and ab in between, the two took
//! different stretches of the machine's speed (one repeat's host p50 was 6 µs against 34-39 µs
//! in the others). With agents attached, each block's reports are written apart and the report
//! adds them up.

use super::{BenchError, PathContext};
use crate::bench::{ping_blocks, tools, BenchConfig};
use crate::lab::PathEndpoints;
use crate::parse::ping::PingReport;
use crate::rundir::{NetPath, Tool};

/// The order of the paths in block `block`: the first path leads in even blocks and follows in
/// odd ones, so neither always pings right after the other.
fn block_order(paths: usize, block: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..paths).collect();
    if block % 2 == 1 {
        order.reverse();
    }
    order
}

/// How many blocks `paths` paths' pings take: alternating needs two paths to alternate between.
fn blocks_for(cfg: &BenchConfig, paths: usize) -> Vec<u32> {
    let blocks = if paths > 1 { cfg.ping_blocks } else { 1 };
    ping_blocks::split(cfg.ping_count, blocks)
}

fn summary(path: NetPath, ping: &PingReport) -> String {
    let stats = ping.stats.map_or("no replies".to_owned(), |s| {
        format!(
            "p50 {:.3} ms, avg {:.3} ms, p99 {:.3} ms",
            s.p50_ms, s.avg_ms, s.p99_ms
        )
    });
    format!(
        "{}: {stats}, {:.1}% loss",
        path.label(),
        ping.loss_ratio() * 100.0
    )
}

fn describe(cfg: &BenchConfig, paths: &[(NetPath, &PathEndpoints)], blocks: usize) -> String {
    let each: Vec<String> = paths
        .iter()
        .map(|(path, e)| format!("{} {} -> {}", path.label(), e.client_netns, e.server_ip))
        .collect();
    let split = if blocks > 1 {
        format!(" each, in {blocks} alternating blocks")
    } else {
        String::new()
    };
    format!(
        "ping {} x {} ms{split}: {}",
        cfg.ping_count,
        cfg.ping_interval_s * 1e3,
        each.join(", ")
    )
}

/// Pings every path of `paths` (`cfg.ping_count` each), in alternating blocks when there are
/// two; the reports come back in the order of `paths`.
pub(super) async fn ping_paths(
    ctx: &mut PathContext<'_>,
    paths: &[(NetPath, &PathEndpoints)],
) -> Result<Vec<PingReport>, BenchError> {
    let (progress, cfg, lab) = (ctx.progress, ctx.cfg, ctx.lab);
    let mode = lab.mode();
    let blocks = blocks_for(cfg, paths.len());
    let t = progress.step(&describe(cfg, paths, blocks.len()));
    let mut flows = Vec::new();
    for (_, endpoints) in paths {
        flows.push(ctx.flows(endpoints, Tool::Ping)?);
    }
    let mut runs: Vec<Vec<PingReport>> = vec![Vec::new(); paths.len()];
    for (b, &count) in blocks.iter().enumerate() {
        let block_cfg = BenchConfig {
            ping_count: count,
            ..cfg.clone()
        };
        for i in block_order(paths.len(), b) {
            let (path, endpoints) = paths[i];
            ctx.follow(&flows[i])?;
            let ping = tools::ping(&endpoints.client_netns, endpoints.server_ip, &block_cfg)
                .await
                .map_err(|source| {
                    progress.failed(BenchError::Tool {
                        mode,
                        step: format!("{}: ping", path.label()),
                        source,
                    })
                })?;
            let part = (blocks.len() > 1).then_some(b);
            ctx.after_part(path, Tool::Ping, part)?;
            runs[i].push(ping);
        }
    }
    let pings: Vec<PingReport> = runs.iter().map(|r| PingReport::concatenated(r)).collect();
    let said: Vec<String> = paths
        .iter()
        .zip(&pings)
        .map(|((path, _), ping)| summary(*path, ping))
        .collect();
    progress.done(t, &said.join("; "));
    Ok(pings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paths_take_turns_leading() {
        assert_eq!(block_order(2, 0), [0, 1]);
        assert_eq!(block_order(2, 1), [1, 0]);
        assert_eq!(block_order(2, 2), [0, 1]);
        assert_eq!(block_order(1, 1), [0]);
    }

    #[test]
    fn one_path_pings_in_one_piece() {
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
