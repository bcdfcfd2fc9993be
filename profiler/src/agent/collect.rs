//! Reading the in-kernel results: counters, summed over CPUs; clearing them
//! (`reset`); and turning a contract histogram (built from the journey log, see
//! `journey_log`) into percentiles via an HDR histogram, keeping its sparse buckets for later
//! merging.

use aya::{
    maps::{Map, MapData, MapError, PerCpuArray, PerCpuValues},
    Ebpf,
};
use hdrhistogram::Histogram as Hdr;
use profiler_common::datapath::{
    bucket_high, bucket_low, Histogram, COUNTER_ABANDONED, COUNTER_ADMITTED, COUNTER_COMPLETED,
    COUNTER_COUNT, COUNTER_DROPPED, COUNTER_JOURNEY_LONG, COUNTER_LOG_FULL, COUNTER_READ_ERRORS,
    COUNTER_REPEATS, COUNTER_RETRANSMITS, COUNTER_SAMPLED_OUT, COUNTER_SLOT_BUSY, HIST_BUCKETS,
    MAP_COUNTERS,
};

use super::report::Counters;

/// Errors reading or clearing the contract maps.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("map {map} is missing from netprof's eBPF object: rebuild netprof")]
    MapMissing { map: &'static str },
    #[error("cannot {action} map {map}")]
    Map {
        map: &'static str,
        action: &'static str,
        #[source]
        source: Box<MapError>,
    },
}

fn map_error(map: &'static str, action: &'static str) -> impl FnOnce(MapError) -> CollectError {
    move |source| CollectError::Map {
        map,
        action,
        source: Box::new(source),
    }
}

fn find<'a>(ebpf: &'a Ebpf, map: &'static str) -> Result<&'a Map, CollectError> {
    ebpf.map(map).ok_or(CollectError::MapMissing { map })
}

fn find_mut<'a>(ebpf: &'a mut Ebpf, map: &'static str) -> Result<&'a mut Map, CollectError> {
    ebpf.map_mut(map).ok_or(CollectError::MapMissing { map })
}

/// Percentiles and the sparse buckets of one histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    /// `[low_ns, count]` of each non-empty bucket.
    pub buckets: Vec<[u64; 2]>,
}

/// The value a bucket is represented by: its middle (its low bound for the exact buckets and
/// the open-ended last one).
pub fn bucket_mid(bucket: usize) -> u64 {
    let (low, high) = (bucket_low(bucket), bucket_high(bucket));
    if high == u64::MAX || high - low <= 1 {
        low
    } else {
        low + (high - low) / 2
    }
}

/// Turns a contract histogram into an HDR histogram (each bucket recorded at its middle).
pub fn to_hdr(hist: &Histogram) -> Hdr<u64> {
    let mut hdr = Hdr::<u64>::new(3).expect("3 significant digits is valid");
    hdr.auto(true);
    for (bucket, count) in hist.buckets.iter().enumerate().take(HIST_BUCKETS) {
        if *count > 0 {
            // Auto-resizing: `record_n` grows the range (saturating_* would clamp instead).
            let value = bucket_mid(bucket);
            if hdr.record_n(value, *count).is_err() {
                hdr.saturating_record_n(value, *count);
            }
        }
    }
    hdr
}

pub fn summarize(hist: &Histogram) -> Summary {
    let hdr = to_hdr(hist);
    // The buckets are the histogram: the document's count is their sum. A per-CPU slot read
    // while its CPU adds a pass can hold the bucket's +1 without the count's (or the other way
    // round), so the kernel's own count may be one off the buckets; the mean divides `sum_ns`
    // by that count, which the kernel updates next to it.
    let count: u64 = hist.buckets.iter().sum();
    let mean_ns = if hist.count > 0 {
        hist.sum_ns as f64 / hist.count as f64
    } else {
        0.0
    };
    let quantile = |q: f64| {
        if hdr.is_empty() {
            0
        } else {
            hdr.value_at_quantile(q)
        }
    };
    Summary {
        count,
        mean_ns,
        p50_ns: quantile(0.50),
        p90_ns: quantile(0.90),
        p99_ns: quantile(0.99),
        buckets: hist
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(b, c)| [bucket_low(b), *c])
            .collect(),
    }
}

fn sum_u64(values: &PerCpuValues<u64>) -> u64 {
    values.iter().fold(0u64, |s, v| s.wrapping_add(*v))
}

/// The kernel's counters; `out_of_order` is user space's (see `journey_log::Tally`).
pub fn read_counters(ebpf: &Ebpf) -> Result<Counters, CollectError> {
    let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(find(ebpf, MAP_COUNTERS)?)
        .map_err(map_error(MAP_COUNTERS, "open"))?;
    let read = |slot: u32| -> Result<u64, CollectError> {
        Ok(sum_u64(
            &map.get(&slot, 0).map_err(map_error(MAP_COUNTERS, "read"))?,
        ))
    };
    Ok(Counters {
        admitted: read(COUNTER_ADMITTED)?,
        completed: read(COUNTER_COMPLETED)?,
        dropped: read(COUNTER_DROPPED)?,
        abandoned: read(COUNTER_ABANDONED)?,
        slot_busy: read(COUNTER_SLOT_BUSY)?,
        journey_long: read(COUNTER_JOURNEY_LONG)?,
        journey_log_full: read(COUNTER_LOG_FULL)?,
        read_errors: read(COUNTER_READ_ERRORS)?,
        retransmits: read(COUNTER_RETRANSMITS)?,
        repeats: read(COUNTER_REPEATS)?,
        sampled_out: read(COUNTER_SAMPLED_OUT)?,
        out_of_order: 0,
    })
}

fn zeros(cpus: usize) -> PerCpuValues<u64> {
    PerCpuValues::try_from(vec![0u64; cpus]).expect("one value per possible CPU")
}

/// Clears the counters. (Journeys in flight are forgotten by a new epoch, see
/// `Agent::reset`: the journey table itself is never walked; ended ones are in the log.)
pub fn reset(ebpf: &mut Ebpf) -> Result<(), CollectError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| CollectError::Map {
        map: MAP_COUNTERS,
        action: "count the CPUs for",
        source: Box::new(MapError::SyscallError(aya::sys::SyscallError {
            call: "nr_cpus",
            io_error: source,
        })),
    })?;
    let mut map: PerCpuArray<&mut MapData, u64> =
        PerCpuArray::try_from(find_mut(ebpf, MAP_COUNTERS)?)
            .map_err(map_error(MAP_COUNTERS, "open"))?;
    for index in 0..COUNTER_COUNT {
        map.set(index, zeros(cpus), 0)
            .map_err(map_error(MAP_COUNTERS, "clear"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use profiler_common::datapath::bucket_of;

    use super::*;

    fn hist(values: &[(u64, u64)]) -> Histogram {
        let mut h = Histogram::default();
        for (value, n) in values {
            h.buckets[bucket_of(*value)] += n;
            h.count += n;
            h.sum_ns += value * n;
        }
        h
    }

    #[test]
    fn percentiles_land_within_the_bucket_error() {
        // 90 values at 1 us, 9 at 10 us, 1 at 1 ms.
        let h = hist(&[(1_000, 90), (10_000, 9), (1_000_000, 1)]);
        let s = summarize(&h);
        assert_eq!(s.count, 100);
        assert!((s.mean_ns - (90_000.0 + 90_000.0 + 1_000_000.0) / 100.0).abs() < 1e-6);
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.035;
        assert!(close(s.p50_ns, 1_000), "{}", s.p50_ns);
        assert!(close(s.p90_ns, 1_000), "{}", s.p90_ns);
        assert!(close(s.p99_ns, 10_000), "{}", s.p99_ns);
        assert_eq!(s.buckets.len(), 3);
        assert_eq!(s.buckets[0], [bucket_low(bucket_of(1_000)), 90]);
        assert!(s
            .buckets
            .iter()
            .all(|[low, _]| bucket_low(bucket_of(*low)) == *low));
    }

    /// A slot read mid-update: 10 passes of 1 µs in the buckets, the kernel's count already at
    /// 11 with the 11th pass's time in the sum. The document counts the buckets (so the report
    /// can check them), the mean stays the kernel's sum over its count.
    #[test]
    fn a_slot_read_mid_update_counts_its_buckets() {
        let mut h = hist(&[(1_000, 10)]);
        h.count += 1;
        h.sum_ns += 1_000;
        let s = summarize(&h);
        assert_eq!(s.count, 10);
        assert_eq!(s.buckets.iter().map(|[_, n]| n).sum::<u64>(), s.count);
        assert_eq!(s.mean_ns, 1_000.0);
    }

    #[test]
    fn small_values_and_empty_histograms() {
        let s = summarize(&hist(&[(0, 1), (7, 3)]));
        assert_eq!((s.p50_ns, s.p99_ns), (7, 7));
        assert_eq!(s.buckets, vec![[0, 1], [7, 3]]);
        let empty = summarize(&Histogram::default());
        assert_eq!((empty.count, empty.p50_ns, empty.mean_ns), (0, 0, 0.0));
        assert!(empty.buckets.is_empty());
    }

    #[test]
    fn bucket_middles_stay_inside_their_bucket() {
        for b in 0..HIST_BUCKETS {
            let mid = bucket_mid(b);
            assert_eq!(bucket_of(mid), b, "bucket {b}");
        }
    }
}
