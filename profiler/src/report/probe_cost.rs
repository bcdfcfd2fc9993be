//! netprof's own in-path cost per program run, by checkpoint kind, from one place: the
//! calibration (`DIR/calibration-<ms>ms.json`, measured by interleaving runs with and without the
//! programs) when the run has one, else the kernel's bpf_stats of the step itself (each
//! program's run time, which leaves out the hook's dispatch and the cache misses a probe
//! causes in the code around it: an estimate, and said to be one). When the profiled pass
//! measured netprof's cost on its own pings (`in_pass_cost`), that total is what netprof
//! costs: the kinds' runs, and what the pass measured beyond them (or the runs scaled down to
//! a total below them).
//!
//! A segment between two checkpoints holds the end of the probe it starts at (after its clock
//! read) and the start of the one it ends at (before its clock read): together about one probe
//! run, taken as half the per-run cost of each end's kind. What a pass measured netprof to cost
//! beyond its probes' runs (`Spread`) is no probe's: every segment loses the same share of
//! what it holds beyond its runs.

use std::collections::BTreeMap;

use serde::Serialize;

use super::calibration::{CalibrationFile, Interval};

/// The checkpoint kind of netfilter points (the gauge's too).
pub const NETFILTER: &str = "netfilter";

/// Where a kind's cost comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeSource {
    /// Measured in-path cost (`netprof overhead --calibrate`).
    Calibration,
    /// The programs' own run time from bpf_stats: an estimate.
    BpfStats,
    /// The profiled pass's own step less the same step with the agents detached (the pings'
    /// p50, ab's CPU time per request): the kinds' runs at each segment's ends, what it
    /// measured beyond them as a share of the event's time (or the runs scaled down to it when
    /// it measured less).
    InPass,
    /// Netfilter runs: the step's own gauge segment (`report::gauge`).
    Gauge,
}

/// netprof's cost that a pass measured beyond its probes' own runs: the cache lines a probe
/// evicts, missed again by the code after it; the runs of another packet's probes that a
/// frame waits behind on a backlog; under ab, the agent's own CPU. It slows the event's work,
/// in segments or not, so every segment loses the same share of its time net of the runs at
/// its ends: a bracket that holds two probe runs around a hash lookup loses those runs and a
/// share of the lookup, not a multiple of the runs that leaves it below zero.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Per event, both nodes, ns.
    pub per_event_ns: Interval,
    /// The share of the event's time net of the runs that was netprof's (0..1).
    pub share: Interval,
}

impl ProbeSource {
    pub fn label(self) -> &'static str {
        match self {
            ProbeSource::Calibration => "calibrated",
            ProbeSource::BpfStats => "bpf_stats estimate",
            ProbeSource::Gauge => {
                "netfilter runs at the step's own gauge (two netfilter runs in a row on FORWARD with nothing between them)"
            }
            ProbeSource::InPass => {
                "measured in the profiled pass (the step with the agents attached less the same step with them detached, in turns): each segment loses the probe runs at its ends at the calibration's (or bpf_stats') per-run costs, no more than the shortest segment between two runs of a kind holds, and the share of its time net of them that the pass measured beyond the runs in the whole event (RTT or CPU per request)"
            }
        }
    }
}

/// One checkpoint kind's cost per run on a followed packet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KindCost {
    pub per_run_ns: Interval,
    pub source: ProbeSource,
}

/// Per-run costs by checkpoint kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProbeCosts {
    pub by_kind: BTreeMap<String, KindCost>,
    /// What the pass measured beyond the runs, when it measured more than they cost.
    pub spread: Option<Spread>,
}

impl ProbeCosts {
    /// The calibration's cost of a run on a followed packet, per kind.
    pub fn from_calibration(file: &CalibrationFile) -> ProbeCosts {
        ProbeCosts {
            by_kind: file
                .calibration
                .per_run
                .iter()
                .map(|(kind, k)| {
                    (
                        kind.clone(),
                        KindCost {
                            per_run_ns: k.followed_ns,
                            source: ProbeSource::Calibration,
                        },
                    )
                })
                .collect(),
            spread: None,
        }
    }

    /// bpf_stats' mean run time per kind (ns), no interval known.
    pub fn from_bpf_stats(mean_ns_by_kind: &BTreeMap<String, f64>) -> ProbeCosts {
        ProbeCosts {
            by_kind: mean_ns_by_kind
                .iter()
                .map(|(kind, ns)| {
                    (
                        kind.clone(),
                        KindCost {
                            per_run_ns: Interval::point(*ns),
                            source: ProbeSource::BpfStats,
                        },
                    )
                })
                .collect(),
            spread: None,
        }
    }

    /// These costs with a netfilter run taken at `gauge_ns` (what the step's gauge holds), when
    /// the step has one.
    pub fn gauged(mut self, gauge_ns: Option<f64>) -> ProbeCosts {
        if let Some(ns) = gauge_ns {
            self.by_kind.insert(
                NETFILTER.to_owned(),
                KindCost {
                    per_run_ns: Interval::point(ns),
                    source: ProbeSource::Gauge,
                },
            );
        }
        self
    }

    /// These costs, with the kinds they lack taken from `fallback`.
    pub fn or(mut self, fallback: &ProbeCosts) -> ProbeCosts {
        for (kind, cost) in &fallback.by_kind {
            self.by_kind.entry(kind.clone()).or_insert(*cost);
        }
        self
    }

    /// These costs scaled so that what they `predicted_ns` per RTT becomes `measured_ns`, the
    /// cost the profiled pass measured on its own pings; each kind keeps its share and takes
    /// the measurement's interval. A cost cannot be negative: a measured shift below zero (noise
    /// on a path with few checkpoints) counts as none. Unchanged when nothing was predicted.
    pub fn scaled_to(&self, predicted_ns: f64, measured_ns: Interval) -> ProbeCosts {
        if predicted_ns <= 0.0 {
            return self.clone();
        }
        let factor = |v: f64| v.max(0.0) / predicted_ns;
        ProbeCosts {
            by_kind: self
                .by_kind
                .iter()
                .map(|(kind, cost)| {
                    let m = cost.per_run_ns.median;
                    (
                        kind.clone(),
                        KindCost {
                            per_run_ns: Interval {
                                median: m * factor(measured_ns.median),
                                lo: m * factor(measured_ns.lo),
                                hi: m * factor(measured_ns.hi),
                            },
                            source: ProbeSource::InPass,
                        },
                    )
                })
                .collect(),
            spread: None,
        }
    }

    /// Each kind's per-run cost no higher than `caps` (ns) where a cap is given.
    pub fn capped(&self, caps: &BTreeMap<String, f64>) -> ProbeCosts {
        let mut out = self.clone();
        for (kind, cost) in &mut out.by_kind {
            if let Some(&cap) = caps.get(kind) {
                let r = &mut cost.per_run_ns;
                (r.median, r.lo, r.hi) = (r.median.min(cap), r.lo.min(cap), r.hi.min(cap));
            }
        }
        out
    }

    /// These costs with `spread` taken off every segment beyond the runs at its ends.
    pub fn with_spread(&self, spread: Spread) -> ProbeCosts {
        ProbeCosts {
            by_kind: self.by_kind.clone(),
            spread: Some(spread),
        }
    }

    /// A kind's cost per run (zero for a kind with no cost known, e.g. an unnamed checkpoint).
    pub fn per_run(&self, kind: &str) -> Interval {
        self.by_kind
            .get(kind)
            .map_or(Interval::point(0.0), |k| k.per_run_ns)
    }

    /// The probe runs a segment from a checkpoint of `from_kind` to one of `to_kind` holds.
    pub fn in_segment(&self, from_kind: &str, to_kind: &str) -> f64 {
        (self.per_run(from_kind).median + self.per_run(to_kind).median) / 2.0
    }

    /// A segment's `typical` time less netprof: the runs at its ends (never below zero), then
    /// the spread's share of what is left.
    pub fn net_of(&self, typical: f64, from_kind: &str, to_kind: &str) -> f64 {
        let share = self.spread.map_or(0.0, |s| s.share.median);
        (typical - self.in_segment(from_kind, to_kind)).max(0.0) * (1.0 - share)
    }

    /// The sources used, each once (for the report's wording).
    pub fn sources(&self) -> Vec<ProbeSource> {
        let mut out: Vec<ProbeSource> = self.by_kind.values().map(|k| k.source).collect();
        if self.spread.is_some() {
            out.push(ProbeSource::InPass);
        }
        out.sort_by_key(|s| *s as u8);
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_holds_half_of_each_ends_probe_and_missing_kinds_fall_back() {
        let bpf = ProbeCosts::from_bpf_stats(&BTreeMap::from([
            ("netfilter".to_owned(), 300.0),
            ("tc-ingress".to_owned(), 500.0),
        ]));
        let calibrated = ProbeCosts {
            by_kind: BTreeMap::from([(
                "netfilter".to_owned(),
                KindCost {
                    per_run_ns: Interval {
                        median: 100.0,
                        lo: 80.0,
                        hi: 130.0,
                    },
                    source: ProbeSource::Calibration,
                },
            )]),
            spread: None,
        }
        .or(&bpf);
        // (100 + 500) / 2: the calibrated netfilter end and tc's bpf_stats estimate.
        assert_eq!(calibrated.in_segment("netfilter", "tc-ingress"), 300.0);
        assert_eq!(calibrated.in_segment("netfilter", ""), 50.0);
        assert_eq!(
            calibrated.sources(),
            [ProbeSource::Calibration, ProbeSource::BpfStats]
        );
    }

    #[test]
    fn a_gauge_replaces_the_netfilter_cost_only_and_only_when_measured() {
        let costs = ProbeCosts::from_bpf_stats(&BTreeMap::from([
            ("netfilter".to_owned(), 300.0),
            ("tc-ingress".to_owned(), 500.0),
        ]));
        assert_eq!(costs.clone().gauged(None), costs);
        let gauged = costs.gauged(Some(90.0));
        // Two netfilter runs in a row hold one gauge: 90 ns, where bpf_stats said 300.
        assert_eq!(gauged.in_segment("netfilter", "netfilter"), 90.0);
        assert_eq!(gauged.in_segment("netfilter", "tc-ingress"), 295.0);
        assert_eq!(
            gauged.sources(),
            [ProbeSource::BpfStats, ProbeSource::Gauge]
        );
    }

    #[test]
    fn scaled_to_a_measured_total_each_kind_keeps_its_share() {
        let costs = ProbeCosts::from_bpf_stats(&BTreeMap::from([
            ("netfilter".to_owned(), 100.0),
            ("tc-ingress".to_owned(), 300.0),
        ]));
        // Predicted 40 µs per RTT, measured 50 [45, 60]: every kind costs 1.25 times more.
        let measured = Interval {
            median: 50_000.0,
            lo: 45_000.0,
            hi: 60_000.0,
        };
        let scaled = costs.scaled_to(40_000.0, measured);
        let nf = scaled.per_run("netfilter");
        assert_eq!((nf.median, nf.lo, nf.hi), (125.0, 112.5, 150.0));
        assert_eq!(scaled.per_run("tc-ingress").median, 375.0);
        assert_eq!(scaled.sources(), [ProbeSource::InPass]);
        // A shift measured below zero is no cost; nothing predicted leaves the costs as they were.
        let negative = costs.scaled_to(40_000.0, Interval::point(-3_000.0));
        assert_eq!(negative.per_run("netfilter").median, 0.0);
        assert_eq!(costs.scaled_to(0.0, measured), costs);
    }
}
