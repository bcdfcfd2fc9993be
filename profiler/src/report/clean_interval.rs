//! How precisely the clean delta is known. A p50 of a few hundred pings moves by several µs
//! from run to run (on a busy two-CPU machine by ±20 µs), as much as the smaller pod modes'
//! whole delta; an unexplained share read without that spread says more about the machine
//! than about the split. The pings were taken in blocks that took turns, block k of the
//! mode's path within seconds of block k of the baseline's, so the blocks are resampled in
//! those pairs (a slow stretch stays with both sides) for the delta's 95% interval.

use crate::bench::bootstrap;
use crate::bench::config::BenchConfig;
use crate::bench::ping_blocks;
use crate::parse::ping::PingReport;

/// One run's clean pings of a mode's path and of the baseline, in the blocks they were
/// pinged in (paired by index).
#[derive(Debug, Clone, PartialEq)]
pub struct CleanBlocks {
    pub mode_us: Vec<Vec<f64>>,
    pub baseline_us: Vec<Vec<f64>>,
}

impl CleanBlocks {
    /// `None` when the pings were not taken in at least 3 blocks, or when a reply was lost:
    /// the RTTs are stored joined, and without every reply the block boundaries are unknown.
    pub fn of(mode: &PingReport, baseline: &PingReport, cfg: &BenchConfig) -> Option<Self> {
        Some(Self {
            mode_us: blocks(mode, cfg)?,
            baseline_us: blocks(baseline, cfg)?,
        })
    }

    /// The 95% interval, in ns, of the median over `runs` of the mode's p50 less the median
    /// of the baseline's p50 (one run: its own delta), as the report takes the delta.
    pub fn delta_interval_ns(runs: &[&CleanBlocks]) -> Option<[i64; 2]> {
        let slices: Vec<bootstrap::PairedBlocks> = runs
            .iter()
            .map(|r| {
                (
                    r.mode_us.iter().map(Vec::as_slice).collect(),
                    r.baseline_us.iter().map(Vec::as_slice).collect(),
                )
            })
            .collect();
        let (lo, hi) = bootstrap::paired_blocks_interval_of_runs(&slices)?;
        Some([(lo * 1e3).round() as i64, (hi * 1e3).round() as i64])
    }
}

fn blocks(ping: &PingReport, cfg: &BenchConfig) -> Option<Vec<Vec<f64>>> {
    let sizes = ping_blocks::split(cfg.ping_count, cfg.ping_blocks);
    let complete =
        ping.received == ping.transmitted && ping.rtts_us.len() as u64 == u64::from(cfg.ping_count);
    if sizes.len() < 3 || !complete {
        return None;
    }
    let mut rest = ping.rtts_us.as_slice();
    Some(
        sizes
            .iter()
            .map(|&n| {
                let (block, tail) = rest.split_at(n as usize);
                rest = tail;
                block.to_vec()
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(rtts_us: Vec<f64>) -> PingReport {
        let n = rtts_us.len() as u64;
        PingReport {
            transmitted: n,
            received: n,
            summary_present: true,
            stats: crate::parse::ping::RttStats::from_samples_us(&rtts_us),
            rtts_us,
        }
    }

    fn cfg(count: u32, blocks: u32) -> BenchConfig {
        BenchConfig {
            ping_count: count,
            ping_blocks: blocks,
            ..BenchConfig::default()
        }
    }

    #[test]
    fn the_pings_are_cut_into_their_blocks_and_a_lost_reply_gives_none() {
        let mode = ping((0..10).map(f64::from).collect());
        let base = ping(vec![1.0; 10]);
        let b = CleanBlocks::of(&mode, &base, &cfg(10, 4)).unwrap();
        assert_eq!(
            b.mode_us,
            [
                vec![0.0, 1.0, 2.0],
                vec![3.0, 4.0, 5.0],
                vec![6.0, 7.0],
                vec![8.0, 9.0]
            ]
        );
        assert!(
            CleanBlocks::of(&mode, &base, &cfg(10, 2)).is_none(),
            "two blocks"
        );
        let mut lost = ping((0..9).map(f64::from).collect());
        lost.transmitted = 10;
        assert!(CleanBlocks::of(&lost, &base, &cfg(10, 4)).is_none());
    }

    #[test]
    fn a_steady_gap_is_known_exactly_and_a_swinging_one_is_not() {
        // Block k of both paths slowed by the same stretch: the gap of 10 µs stays exact.
        let drift = [0.0, 40.0, 10.0, 30.0, 20.0];
        let rtts = |gap: f64| -> Vec<f64> {
            drift
                .iter()
                .flat_map(|d| (0..4).map(move |i| 20.0 + d + gap + f64::from(i)))
                .collect()
        };
        let steady = CleanBlocks::of(&ping(rtts(10.0)), &ping(rtts(0.0)), &cfg(20, 5)).unwrap();
        assert_eq!(
            CleanBlocks::delta_interval_ns(&[&steady]),
            Some([10_000, 10_000])
        );
        // The mode's path alone swings from block to block: the interval widens.
        let swinging: Vec<f64> = [0.0, 60.0, 5.0, 50.0, 10.0]
            .iter()
            .flat_map(|d| (0..4).map(move |i| 30.0 + d + f64::from(i)))
            .collect();
        let noisy = CleanBlocks::of(&ping(swinging), &ping(rtts(0.0)), &cfg(20, 5)).unwrap();
        let [lo, hi] = CleanBlocks::delta_interval_ns(&[&noisy]).unwrap();
        assert!(hi - lo > 20_000, "[{lo}, {hi}]");
    }
}
