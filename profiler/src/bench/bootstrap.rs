//! How far a median of few noisy samples can be trusted: a bootstrap interval. On a small
//! shared machine the overhead ratios swing by several percent from one sample to the next,
//! so a single median says little about a target of a few percent without its interval.

use super::overhead::median;

/// Resamples drawn per interval: enough for stable 2.5/97.5 percentiles.
const RESAMPLES: usize = 4000;

/// The central 95% interval of the median of `values`, by resampling them with replacement;
/// `None` under 3 values. Deterministic (a fixed seed), so one run's output can be reproduced
/// from its samples.
pub fn median_interval(values: &[f64]) -> Option<(f64, f64)> {
    if values.len() < 3 {
        return None;
    }
    let mut rng = SplitMix64(0x6e65_7470_726f_6631);
    let mut medians: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let mut draw: Vec<f64> = (0..values.len())
                .map(|_| values[rng.below(values.len())])
                .collect();
            median(&mut draw)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    let at = |q: f64| medians[((RESAMPLES as f64 - 1.0) * q).round() as usize];
    Some((at(0.025), at(0.975)))
}

/// The central 95% interval of `median(a) - median(b)`, each pooled over its blocks, when
/// `a` and `b` were taken in blocks that pair up (block k of each within seconds of the
/// other's): whole pairs are resampled with replacement, so a slow stretch of the machine
/// stays with both sides of its pair. `None` under 3 pairs or with an empty side.
pub fn paired_blocks_interval(a: &[&[f64]], b: &[&[f64]]) -> Option<(f64, f64)> {
    paired_blocks_interval_of_runs(&[(a.to_vec(), b.to_vec())])
}

/// One run's blocks of both sides, paired by index: `(a, b)`.
pub type PairedBlocks<'a> = (Vec<&'a [f64]>, Vec<&'a [f64]>);

/// The same over several runs, each taken in paired blocks: the interval of the median over
/// the runs of `median(a_k)` less the median over the runs of `median(b_k)`, each run's pairs
/// resampled on their own. `None` when a run has under 3 pairs (or there is no run).
pub fn paired_blocks_interval_of_runs(runs: &[PairedBlocks]) -> Option<(f64, f64)> {
    let pairs: Vec<usize> = runs.iter().map(|(a, b)| a.len().min(b.len())).collect();
    if pairs.is_empty() || pairs.iter().any(|&p| p < 3) {
        return None;
    }
    let mut rng = SplitMix64(0x6e65_7470_726f_6632);
    let mut diffs = Vec::with_capacity(RESAMPLES);
    'resample: while diffs.len() < RESAMPLES {
        let (mut ma, mut mb) = (Vec::new(), Vec::new());
        for ((a, b), &pairs) in runs.iter().zip(&pairs) {
            let (mut pa, mut pb) = (Vec::new(), Vec::new());
            for _ in 0..pairs {
                let k = rng.below(pairs);
                pa.extend_from_slice(a[k]);
                pb.extend_from_slice(b[k]);
            }
            if pa.is_empty() || pb.is_empty() {
                // Every drawn block lost all its replies; draw again.
                continue 'resample;
            }
            ma.push(median(&mut pa));
            mb.push(median(&mut pb));
        }
        diffs.push(median(&mut ma) - median(&mut mb));
    }
    diffs.sort_by(f64::total_cmp);
    let at = |q: f64| diffs[((RESAMPLES as f64 - 1.0) * q).round() as usize];
    Some((at(0.025), at(0.975)))
}

/// Where a target lies against an interval: the verdict an engineer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The whole interval is at or above the target.
    Met,
    /// The whole interval is below it.
    Missed,
    /// The interval holds the target: this machine cannot tell.
    Unresolved,
}

pub fn verdict(interval: (f64, f64), target: f64) -> Verdict {
    if interval.0 >= target {
        Verdict::Met
    } else if interval.1 < target {
        Verdict::Missed
    } else {
        Verdict::Unresolved
    }
}

/// A small, well-known generator (SplitMix64): no dependency for one resampling loop.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the modulo bias is below 1e-15 for the sizes used here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_blocks_keep_a_shared_drift_out_of_the_interval() {
        // Both sides drift together by up to 40 between blocks; `a` is always 10 above `b`.
        let drift = [0.0, 40.0, 10.0, 30.0, 20.0, 5.0];
        let a: Vec<Vec<f64>> = drift.iter().map(|d| vec![d + 110.0, d + 111.0]).collect();
        let b: Vec<Vec<f64>> = drift.iter().map(|d| vec![d + 100.0, d + 101.0]).collect();
        fn slices(v: &[Vec<f64>]) -> Vec<&[f64]> {
            v.iter().map(Vec::as_slice).collect()
        }
        let (lo, hi) = paired_blocks_interval(&slices(&a), &slices(&b)).unwrap();
        assert!(lo <= 10.0 && 10.0 <= hi, "[{lo}, {hi}]");
        assert!(
            hi - lo < 1.0,
            "pairing keeps the 40 of drift out: [{lo}, {hi}]"
        );
        assert_eq!(
            paired_blocks_interval(&slices(&a[..2]), &slices(&b[..2])),
            None
        );
    }

    #[test]
    fn runs_are_resampled_apart_and_their_medians_taken() {
        // Three runs whose `a` is 10, 30 and 12 above `b` (steady within each run): the
        // median of the runs' differences is 12, and resampling within runs cannot move it.
        let run = |gap: f64| -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
            let b: Vec<Vec<f64>> = (0..5).map(|k| vec![100.0 + k as f64; 4]).collect();
            let a = b
                .iter()
                .map(|blk| blk.iter().map(|x| x + gap).collect())
                .collect();
            (a, b)
        };
        let owned = [run(10.0), run(30.0), run(12.0)];
        let runs: Vec<PairedBlocks> = owned
            .iter()
            .map(|(a, b)| {
                (
                    a.iter().map(Vec::as_slice).collect(),
                    b.iter().map(Vec::as_slice).collect(),
                )
            })
            .collect();
        let (lo, hi) = paired_blocks_interval_of_runs(&runs).unwrap();
        assert!(lo <= 12.0 && 12.0 <= hi, "[{lo}, {hi}]");
        assert!(hi - lo < 5.0, "the 30 of one run is outvoted: [{lo}, {hi}]");
        let (one_lo, one_hi) = paired_blocks_interval(&runs[1].0, &runs[1].1).unwrap();
        assert!(one_lo <= 30.0 && 30.0 <= one_hi, "[{one_lo}, {one_hi}]");
        let short = vec![(runs[0].0[..2].to_vec(), runs[0].1[..2].to_vec())];
        assert_eq!(paired_blocks_interval_of_runs(&short), None);
        assert_eq!(paired_blocks_interval_of_runs(&[]), None);
    }

    #[test]
    fn the_interval_holds_the_median_and_narrows_with_more_samples() {
        let noisy: Vec<f64> = (0..12)
            .map(|i| 0.96 + 0.08 * (((i * 7) % 12) as f64 / 11.0 - 0.5))
            .collect();
        let (lo, hi) = median_interval(&noisy).unwrap();
        let mid = median(&mut noisy.clone());
        assert!(lo <= mid && mid <= hi, "{lo} {mid} {hi}");
        assert!(
            hi - lo > 0.01,
            "twelve samples spread over ±4% leave a wide interval: {lo}..{hi}"
        );
        let many: Vec<f64> = (0..300)
            .map(|i| 0.96 + 0.08 * (((i * 7) % 300) as f64 / 299.0 - 0.5))
            .collect();
        let (lo_many, hi_many) = median_interval(&many).unwrap();
        assert!(
            hi_many - lo_many < (hi - lo) / 2.0,
            "{lo_many}..{hi_many} vs {lo}..{hi}"
        );
        assert_eq!(median_interval(&noisy), Some((lo, hi)), "deterministic");
        assert_eq!(median_interval(&[1.0, 2.0]), None);
    }

    #[test]
    fn verdicts_need_the_whole_interval_on_one_side() {
        assert_eq!(verdict((0.975, 1.01), 0.97), Verdict::Met);
        assert_eq!(verdict((0.90, 0.965), 0.97), Verdict::Missed);
        assert_eq!(verdict((0.94, 1.005), 0.97), Verdict::Unresolved);
    }
}
