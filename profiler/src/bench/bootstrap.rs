//! How far a median of few noisy samples can be trusted: a bootstrap interval. The overhead
//! ratios on a 2-CPU lab swing by ±8% from one sample to the next, so a single median says
//! little about a 3% target without its interval.

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
