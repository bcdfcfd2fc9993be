//! netprof's own in-path cost per program run, by checkpoint kind, from one place: the
//! calibration (`DIR/calibration-<ms>ms.json`, measured by interleaving runs with and without the
//! programs) when the run has one, else the kernel's bpf_stats of the step itself (each
//! program's run time, which leaves out the hook's dispatch and the cache misses a probe
//! causes in the code around it: an estimate, and said to be one).
//!
//! A segment between two checkpoints holds the end of the probe it starts at (after its clock
//! read) and the start of the one it ends at (before its clock read): together about one probe
//! run, taken as half the per-run cost of each end's kind.

use std::collections::BTreeMap;

use serde::Serialize;

use super::calibration::{CalibrationFile, Interval};

/// Where a kind's cost comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeSource {
    /// Measured in-path cost (`netprof overhead --calibrate`).
    Calibration,
    /// The programs' own run time from bpf_stats: an estimate.
    BpfStats,
}

impl ProbeSource {
    pub fn label(self) -> &'static str {
        match self {
            ProbeSource::Calibration => "calibrated",
            ProbeSource::BpfStats => "bpf_stats estimate",
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
        }
    }

    /// These costs, with the kinds they lack taken from `fallback`.
    pub fn or(mut self, fallback: &ProbeCosts) -> ProbeCosts {
        for (kind, cost) in &fallback.by_kind {
            self.by_kind.entry(kind.clone()).or_insert(*cost);
        }
        self
    }

    /// A kind's cost per run (zero for a kind with no cost known, e.g. an unnamed checkpoint).
    pub fn per_run(&self, kind: &str) -> Interval {
        self.by_kind
            .get(kind)
            .map_or(Interval::point(0.0), |k| k.per_run_ns)
    }

    /// What a segment from a checkpoint of `from_kind` to one of `to_kind` holds of netprof.
    pub fn in_segment(&self, from_kind: &str, to_kind: &str) -> f64 {
        (self.per_run(from_kind).median + self.per_run(to_kind).median) / 2.0
    }

    /// The sources used, each once (for the report's wording).
    pub fn sources(&self) -> Vec<ProbeSource> {
        let mut out: Vec<ProbeSource> = self.by_kind.values().map(|k| k.source).collect();
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
}
