//! The journeys the kernel logged as their skbs were freed (`MAP_JOURNEY_LOG`), turned into
//! what the agent reports: the hits per checkpoint and one latency histogram per segment.
//!
//! The kernel copies each ended journey whole into a ring buffer without waking anyone: the
//! per-segment histogram updates it used to make there cost a few cold cache lines each, in
//! the softirq of the packet being timed. A thread drains the ring every few milliseconds
//! ([`DRAIN_EVERY`]) and every snapshot drains it first, so a snapshot holds every journey
//! that ended before it.

use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasherDefault, Hasher},
    time::Duration,
};

use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};
use profiler_common::datapath::{
    bucket_of, Histogram, Journey, CP_CONSUMED, END_CONSUMED, END_DROPPED, JOURNEY_CAP,
    MAP_JOURNEY_LOG,
};

use super::collect::CollectError;

/// How often the log is drained between snapshots. Its ring holds `JOURNEY_LOG_BYTES`, about
/// 14,000 journeys: at 10 ms a load would have to end 1.4 million journeys a second to fill it.
pub const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// What the logged journeys add up to. Under load the drain adds a journey of some 20
/// checkpoints for every packet of both directions, so the tables are built for that: hits in
/// a table indexed by checkpoint id, segments in a hash map with a cheap hash (ordered maps
/// there cost the agent's thread about as much as the histogram updates themselves).
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Followed packets seen at each checkpoint, by checkpoint id.
    hits: Vec<u64>,
    /// Each segment's histogram, by (from with its `SEGMENT_INBOUND` flag, to).
    segments: HashMap<(u16, u16), Box<Histogram>, BuildHasherDefault<PairHasher>>,
    /// Dropped packets by (last checkpoint, the kernel's drop reason).
    pub drops: BTreeMap<(u16, u32), u64>,
    /// Segments left out because their end was recorded before their start (see
    /// `COUNTER_OUT_OF_ORDER`).
    pub out_of_order: u64,
    /// Log records too short to be a journey (a kernel object of another netprof version).
    pub malformed: u64,
}

impl Tally {
    /// Adds one ended journey: every checkpoint it reached is a hit, every pair of
    /// consecutive ones a segment; a consumed packet's journey also has a last segment, from
    /// its last checkpoint to `CP_CONSUMED`; a dropped one counts as a drop there.
    pub fn add(&mut self, journey: &Journey) {
        let len = usize::from(journey.len).min(JOURNEY_CAP);
        let mut previous: Option<(u16, u32)> = None;
        for (&cp, &at) in journey.cps[..len].iter().zip(&journey.offsets_ns[..len]) {
            self.hit(cp);
            if let Some((from, since)) = previous {
                match at.checked_sub(since) {
                    Some(delta) => self.record(from | journey.direction, cp, u64::from(delta)),
                    None => self.out_of_order += 1,
                }
            }
            previous = Some((cp, at));
        }
        match journey.end {
            END_CONSUMED => {
                let idle = journey.end_ns.saturating_sub(journey.last_ns);
                self.record(journey.last_cp | journey.direction, CP_CONSUMED, idle);
            }
            END_DROPPED => {
                *self
                    .drops
                    .entry((journey.last_cp, journey.drop_reason))
                    .or_default() += 1;
            }
            _ => {}
        }
    }

    /// Adds one record of the log, as the kernel wrote it.
    pub fn add_record(&mut self, bytes: &[u8]) {
        if bytes.len() < std::mem::size_of::<Journey>() {
            self.malformed += 1;
            return;
        }
        // SAFETY: `Journey` is plain data (integers only) and `bytes` holds at least one; the
        // ring gives no alignment guarantee beyond 8 bytes, so the read is unaligned.
        let journey = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Journey>()) };
        self.add(&journey);
    }

    /// Followed packets seen at each checkpoint that saw any, by id.
    pub fn hits(&self) -> BTreeMap<u16, u64> {
        (0u16..)
            .zip(&self.hits)
            .filter(|(_, &n)| n > 0)
            .map(|(cp, &n)| (cp, n))
            .collect()
    }

    /// Each segment's histogram, by (from with its `SEGMENT_INBOUND` flag, to), in order.
    pub fn segments(&self) -> BTreeMap<(u16, u16), &Histogram> {
        self.segments
            .iter()
            .map(|(key, hist)| (*key, hist.as_ref()))
            .collect()
    }

    fn hit(&mut self, cp: u16) {
        let index = usize::from(cp);
        if index >= self.hits.len() {
            self.hits.resize(index + 1, 0);
        }
        self.hits[index] += 1;
    }

    fn record(&mut self, from: u16, to: u16, delta_ns: u64) {
        let hist = self.segments.entry((from, to)).or_default();
        hist.buckets[bucket_of(delta_ns)] += 1;
        hist.count += 1;
        hist.sum_ns = hist.sum_ns.wrapping_add(delta_ns);
    }
}

/// A multiply-rotate hash (FxHash's step) for the segment keys, two `u16`s: std's SipHash,
/// built to resist chosen keys, costs more per journey than the histogram updates, and these
/// keys are checkpoint ids the agent itself assigns.
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(SEED);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The ring and what was drained from it so far.
pub struct JourneyLog {
    ring: RingBuf<MapData>,
    tally: Tally,
}

impl std::fmt::Debug for JourneyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JourneyLog")
            .field("tally", &self.tally)
            .finish_non_exhaustive()
    }
}

impl JourneyLog {
    /// Takes the log's ring out of the loaded object (the programs keep writing to it).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, CollectError> {
        let map = ebpf
            .take_map(MAP_JOURNEY_LOG)
            .ok_or(CollectError::MapMissing {
                map: MAP_JOURNEY_LOG,
            })?;
        let ring = RingBuf::try_from(map).map_err(|source| CollectError::Map {
            map: MAP_JOURNEY_LOG,
            action: "open",
            source: Box::new(source),
        })?;
        Ok(Self {
            ring,
            tally: Tally::default(),
        })
    }

    /// Moves every journey logged so far into the tally; returns how many.
    pub fn drain(&mut self) -> usize {
        let mut drained = 0;
        while let Some(record) = self.ring.next() {
            self.tally.add_record(&record);
            drained += 1;
        }
        drained
    }

    /// Everything logged up to now.
    pub fn tally(&mut self) -> &Tally {
        self.drain();
        &self.tally
    }

    /// Forgets everything logged up to now (the records waiting in the ring are read past,
    /// not tallied).
    pub fn clear(&mut self) {
        while self.ring.next().is_some() {}
        self.tally = Tally::default();
    }
}

#[cfg(test)]
mod tests {
    use profiler_common::datapath::{END_RESTARTED, SEGMENT_INBOUND};

    use super::*;

    fn journey(steps: &[(u16, u32)], end: u16, idle_ns: u64, direction: u16) -> Journey {
        let mut j = Journey::start(0xffff_8880_0000_0040, 1_000, steps[0].0, 1);
        for (i, (cp, at)) in steps.iter().enumerate() {
            j.cps[i] = *cp;
            j.offsets_ns[i] = *at;
        }
        j.len = steps.len() as u16;
        j.last_cp = steps[steps.len() - 1].0;
        j.last_ns = 1_000 + u64::from(steps[steps.len() - 1].1);
        j.end_ns = j.last_ns + idle_ns;
        j.end = end;
        j.direction = direction;
        j
    }

    fn count(tally: &Tally, from: u16, to: u16) -> (u64, u64) {
        let h = tally.segments()[&(from, to)];
        (h.count, h.sum_ns)
    }

    #[test]
    fn a_consumed_journey_gives_hits_segments_and_its_last_segment() {
        let mut tally = Tally::default();
        tally.add(&journey(
            &[(64, 0), (5, 300), (66, 1_000)],
            END_CONSUMED,
            250,
            0,
        ));
        tally.add(&journey(
            &[(64, 0), (5, 100), (66, 400)],
            END_CONSUMED,
            50,
            0,
        ));
        assert_eq!(tally.hits(), BTreeMap::from([(5, 2), (64, 2), (66, 2)]));
        assert_eq!(count(&tally, 64, 5), (2, 400));
        assert_eq!(count(&tally, 5, 66), (2, 1_000));
        assert_eq!(count(&tally, 66, CP_CONSUMED), (2, 300));
        assert_eq!(tally.segments().len(), 3);
        let h = tally.segments()[&(64, 5)];
        assert_eq!(
            (h.buckets[bucket_of(300)], h.buckets[bucket_of(100)]),
            (1, 1)
        );
    }

    #[test]
    fn a_dropped_inbound_journey_has_no_last_segment_and_carries_its_direction() {
        let mut tally = Tally::default();
        let mut dropped = journey(&[(70, 0), (9, 40)], END_DROPPED, 999, SEGMENT_INBOUND);
        dropped.drop_reason = 7;
        tally.add(&dropped);
        assert_eq!(tally.hits(), BTreeMap::from([(9, 1), (70, 1)]));
        assert_eq!(count(&tally, 70 | SEGMENT_INBOUND, 9), (1, 40));
        assert_eq!(tally.segments().len(), 1);
        // Counted at its last checkpoint without the direction flag, by its reason.
        tally.add(&dropped);
        assert_eq!(tally.drops, BTreeMap::from([((9, 7), 2)]));
    }

    #[test]
    fn hits_and_segments_come_out_in_id_order_whatever_the_ids() {
        let mut tally = Tally::default();
        tally.add(&journey(
            &[(4_000, 0), (5, 10), (70, 30)],
            END_CONSUMED,
            5,
            0,
        ));
        tally.add(&journey(
            &[(70, 0), (4_000, 20)],
            END_CONSUMED,
            5,
            SEGMENT_INBOUND,
        ));
        assert_eq!(tally.hits(), BTreeMap::from([(5, 1), (70, 2), (4_000, 2)]));
        let keys: Vec<(u16, u16)> = tally.segments().into_keys().collect();
        assert_eq!(
            keys,
            vec![
                (5, 70),
                (70, CP_CONSUMED),
                (4_000, 5),
                (70 | SEGMENT_INBOUND, 4_000),
                (4_000 | SEGMENT_INBOUND, CP_CONSUMED),
            ]
        );
    }

    #[test]
    fn only_dropped_journeys_are_drops() {
        let mut tally = Tally::default();
        tally.add(&journey(&[(64, 0), (5, 300)], END_CONSUMED, 10, 0));
        tally.add(&journey(&[(64, 0), (5, 300)], END_RESTARTED, 0, 0));
        assert!(tally.drops.is_empty());
    }

    #[test]
    fn an_out_of_order_entry_is_counted_not_timed() {
        let mut tally = Tally::default();
        tally.add(&journey(&[(64, 0), (5, 500), (66, 200)], END_DROPPED, 0, 0));
        assert_eq!(tally.out_of_order, 1);
        assert_eq!(count(&tally, 64, 5), (1, 500));
        assert!(!tally.segments().contains_key(&(5, 66)));
    }

    #[test]
    fn records_are_read_as_the_kernel_wrote_them() {
        let j = journey(&[(64, 0), (5, 300)], END_CONSUMED, 10, 0);
        // SAFETY: viewing a plain-data struct as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&j as *const Journey).cast::<u8>(),
                std::mem::size_of::<Journey>(),
            )
        };
        let mut tally = Tally::default();
        // Shifted by one byte: the read must not assume alignment.
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(bytes);
        tally.add_record(&shifted[1..]);
        tally.add_record(&bytes[..bytes.len() - 1]);
        assert_eq!(tally.malformed, 1);
        assert_eq!(count(&tally, 64, 5), (1, 300));
        assert_eq!(count(&tally, 5, CP_CONSUMED), (1, 10));
    }
}
