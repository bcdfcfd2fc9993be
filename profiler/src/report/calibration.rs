//! Reader of `DIR/calibration-<ms>ms.json` and an older run's `DIR/calibration.json`
//! (`netprof.calibration/v1`, written by `netprof overhead --calibrate`): netprof's own in-path
//! cost per program run, measured by interleaving runs without programs, with programs that
//! only return, and with netprof, per checkpoint kind (the agent report's checkpoint `kind`),
//! and the ping RTT's p50 shift.
//!
//! Every number is checked (finite, not negative, `lo <= median <= hi`); a bad one is an
//! error naming the file and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bench::cpu_idle::CpuIdle;

use super::input::InputError;

pub const SCHEMA: &str = "netprof.calibration/v1";

/// A median with its interval, ns.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
pub struct Interval {
    pub median: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    /// A single value with no spread known.
    pub fn point(value: f64) -> Interval {
        Interval {
            median: value,
            lo: value,
            hi: value,
        }
    }

    pub fn scaled(self, factor: f64) -> Interval {
        let (a, b) = (self.lo * factor, self.hi * factor);
        Interval {
            median: self.median * factor,
            lo: a.min(b),
            hi: a.max(b),
        }
    }

    pub fn plus(self, other: Interval) -> Interval {
        Interval {
            median: self.median + other.median,
            lo: self.lo + other.lo,
            hi: self.hi + other.hi,
        }
    }

    pub fn minus(self, other: Interval) -> Interval {
        Interval {
            median: self.median - other.median,
            lo: self.lo - other.hi,
            hi: self.hi - other.lo,
        }
    }
}

/// One checkpoint kind's cost per program run.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct KindCalibration {
    /// A run on a packet netprof follows: what a segment's ends hold of netprof.
    pub followed_ns: Interval,
    /// A run on any other packet.
    pub untracked_ns: Interval,
    /// A program that only returns: the hook's dispatch alone.
    pub dispatch_ns: Interval,
}

/// `calibration.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Calibration {
    pub schema: String,
    /// Checkpoint kind -> cost per run.
    pub per_run: BTreeMap<String, KindCalibration>,
    /// The ping RTT's p50 with netprof minus without (same lab, interleaved rounds).
    pub rtt_shift_ns: Interval,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub rounds: Option<u32>,
    #[serde(default)]
    pub ping_interval_s: Option<f64>,
    /// What the CPUs did between packets (older files: not recorded, they were left as-is).
    #[serde(default)]
    pub cpu_idle: Option<CpuIdle>,
    /// bpf_stats' share of the time while netprof ran, percent (older files: not recorded).
    #[serde(default)]
    pub stats_share: Option<u32>,
    /// Each variant against no programs (older files: not recorded).
    #[serde(default)]
    pub ratios: Option<CalibrationRatios>,
}

/// Per round, a variant's measurement over the same round's without programs; the median over
/// rounds with its interval. The held programs' ratio is the floor of netprof's: what the
/// hooks' dispatch costs before any program body, so a goal below it cannot be met by leaner
/// programs at these hooks.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
pub struct CalibrationRatios {
    /// The followed ping's p50 with the programs held at their hooks (each returns at once:
    /// the hooks' dispatch), and with netprof.
    pub held_rtt: Interval,
    pub netprof_rtt: Interval,
    /// The machine's CPU per ab request, the same (absent without /proc/stat).
    #[serde(default)]
    pub held_cpu: Option<Interval>,
    #[serde(default)]
    pub netprof_cpu: Option<Interval>,
}

/// A calibration with the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationFile {
    pub path: PathBuf,
    pub calibration: Calibration,
}

fn check_interval(path: &Path, field: &str, i: Interval, signed: bool) -> Result<(), InputError> {
    let invalid = |value: f64, why: &'static str| InputError::Invalid {
        path: path.to_path_buf(),
        field: field.to_owned(),
        value: value.to_string(),
        why,
    };
    for v in [i.median, i.lo, i.hi] {
        if !v.is_finite() {
            return Err(invalid(v, "not a finite number"));
        }
        if !signed && v < 0.0 {
            return Err(invalid(v, "a cost cannot be negative"));
        }
    }
    if !(i.lo <= i.median && i.median <= i.hi) {
        return Err(invalid(
            i.median,
            "the median must lie within its interval [lo, hi]",
        ));
    }
    Ok(())
}

impl Calibration {
    /// Checks every value; errors name `path` and the field.
    pub fn check(&self, path: &Path) -> Result<(), InputError> {
        if self.per_run.is_empty() {
            return Err(InputError::Invalid {
                path: path.to_path_buf(),
                field: "per_run".to_owned(),
                value: "{}".to_owned(),
                why: "no checkpoint kind calibrated: rerun `netprof overhead --calibrate`",
            });
        }
        for (kind, k) in &self.per_run {
            for (name, i) in [
                ("followed_ns", k.followed_ns),
                ("untracked_ns", k.untracked_ns),
                ("dispatch_ns", k.dispatch_ns),
            ] {
                check_interval(path, &format!("per_run.{kind}.{name}"), i, false)?;
            }
        }
        if let Some(s) = self
            .ping_interval_s
            .filter(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(InputError::Invalid {
                path: path.to_path_buf(),
                field: "ping_interval_s".to_owned(),
                value: s.to_string(),
                why: "the pings' interval must be a positive number of seconds",
            });
        }
        if let Some(r) = &self.ratios {
            let measured = [
                ("held_rtt", Some(r.held_rtt)),
                ("netprof_rtt", Some(r.netprof_rtt)),
                ("held_cpu", r.held_cpu),
                ("netprof_cpu", r.netprof_cpu),
            ];
            for (name, i) in measured.into_iter().filter_map(|(n, i)| Some((n, i?))) {
                let field = format!("ratios.{name}");
                check_interval(path, &field, i, false)?;
                if i.lo <= 0.0 {
                    return Err(InputError::Invalid {
                        path: path.to_path_buf(),
                        field,
                        value: i.lo.to_string(),
                        why: "a ratio of two measured values must be above zero",
                    });
                }
            }
        }
        // A shift is a difference of two measured p50s: it may come out below zero.
        check_interval(path, "rtt_shift_ns", self.rtt_shift_ns, true)
    }
}

/// The calibration a split of pings some interval apart takes its probe costs from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chosen<'a> {
    pub file: &'a CalibrationFile,
    /// Measured at the pings' own interval. A probe run costs more when the CPUs idle between
    /// packets than when they stay busy, so another interval's figures are only an estimate.
    pub exact: bool,
}

impl CalibrationFile {
    /// What the CPUs did between the calibration's packets (older files: as-is).
    pub fn cpu_idle(&self) -> CpuIdle {
        self.calibration.cpu_idle.unwrap_or_default()
    }

    /// Milliseconds between the calibration's pings, when it says.
    pub fn ping_interval_ms(&self) -> Option<f64> {
        self.calibration.ping_interval_s.map(|s| s * 1e3)
    }
}

/// The calibration measured at pings `interval_s` apart with the CPUs idling as `cpu_idle`,
/// else the one nearest to it (the same idle setting first, then by the interval's ratio; one
/// that does not give its interval only when no other exists).
pub fn for_pings(
    files: &[CalibrationFile],
    interval_s: f64,
    cpu_idle: CpuIdle,
) -> Option<Chosen<'_>> {
    let other_idle = |f: &CalibrationFile| f.cpu_idle() != cpu_idle;
    let distance = |f: &CalibrationFile| {
        f.calibration
            .ping_interval_s
            .filter(|s| *s > 0.0)
            .map_or(f64::INFINITY, |s| (s / interval_s).ln().abs())
    };
    let file = files.iter().min_by(|a, b| {
        other_idle(a)
            .cmp(&other_idle(b))
            .then(distance(a).total_cmp(&distance(b)))
    })?;
    Some(Chosen {
        file,
        exact: distance(file) < 1e-6 && !other_idle(file),
    })
}

/// The calibration at the shortest ping interval (those that do not give theirs last).
pub fn warmest(files: &[CalibrationFile]) -> Option<&CalibrationFile> {
    files.iter().min_by(|a, b| {
        let key = |f: &CalibrationFile| f.calibration.ping_interval_s.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b))
    })
}

/// What a report says when a split's pings were not the calibration's.
pub fn mismatch_note(
    what: &str,
    chosen: &Chosen,
    interval_s: f64,
    cpu_idle: CpuIdle,
) -> Option<String> {
    if chosen.exact {
        return None;
    }
    let at = chosen
        .file
        .ping_interval_ms()
        .map_or("an unknown interval".to_owned(), |ms| {
            format!("pings {ms} ms apart")
        });
    Some(format!(
        "{what}: its pings were {} ms apart with the CPUs idling {cpu_idle}, the calibration ({}) was measured at {at} with them {}. A probe run costs more when the CPUs idle between packets, so its cost per run here is an estimate: run `netprof overhead --calibrate DIR` (it calibrates at every interval DIR's pings used, with the CPUs as they were).",
        interval_s * 1e3,
        chosen.file.path.display(),
        chosen.file.cpu_idle()
    ))
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<CalibrationFile, InputError> {
    let value = super::input::read_json(path)?;
    let calibration: Calibration = super::input::typed(path, value, SCHEMA)?;
    calibration.check(path)?;
    Ok(CalibrationFile {
        path: path.to_path_buf(),
        calibration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAND_WRITTEN: &str = r#"{
      "schema": "netprof.calibration/v1",
      "mode": "flannel-vxlan",
      "kernel": "6.18.0",
      "rounds": 12,
      "ping_interval_s": 0.002,
      "per_run": {
        "netfilter": {"followed_ns": {"median": 180.0, "lo": 150.0, "hi": 210.0},
                      "untracked_ns": {"median": 40.0, "lo": 35.0, "hi": 46.0},
                      "dispatch_ns": {"median": 25.0, "lo": 20.0, "hi": 31.0}},
        "tc-ingress": {"followed_ns": {"median": 220.0, "lo": 200.0, "hi": 260.0},
                       "untracked_ns": {"median": 30.0, "lo": 28.0, "hi": 33.0},
                       "dispatch_ns": {"median": 15.0, "lo": 12.0, "hi": 18.0}}
      },
      "rtt_shift_ns": {"median": 6400.0, "lo": 5100.0, "hi": 7900.0},
      "ratios": {"held_rtt": {"median": 1.21, "lo": 1.1, "hi": 1.3},
                 "netprof_rtt": {"median": 1.36, "lo": 1.2, "hi": 1.5},
                 "held_cpu": null, "netprof_cpu": null}
    }"#;

    fn write(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "netprof-calibration-{name}-{}.json",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_hand_written_file_reads_back_its_numbers() {
        let path = write("good", HAND_WRITTEN);
        let file = load(&path).unwrap();
        let c = &file.calibration;
        assert_eq!(c.per_run.len(), 2);
        assert_eq!(
            c.per_run["netfilter"].followed_ns,
            Interval {
                median: 180.0,
                lo: 150.0,
                hi: 210.0
            }
        );
        assert_eq!(c.per_run["tc-ingress"].dispatch_ns.hi, 18.0);
        assert_eq!(c.rtt_shift_ns.lo, 5100.0);
        assert_eq!(c.mode.as_deref(), Some("flannel-vxlan"));
        assert_eq!(c.rounds, Some(12));
        assert_eq!(c.ratios.unwrap().netprof_rtt.median, 1.36);
        std::fs::remove_file(path).unwrap();
        // Files from before the ratios were recorded read as they did.
        let older = HAND_WRITTEN
            .split(",\n      \"ratios\"")
            .next()
            .unwrap()
            .to_owned()
            + "}";
        let path = write("older", &older);
        assert_eq!(load(&path).unwrap().calibration.ratios, None);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn impossible_values_name_the_file_and_the_field() {
        let cases = [
            (
                HAND_WRITTEN.replace("\"median\": 180.0", "\"median\": -180.0"),
                "per_run.netfilter.followed_ns",
            ),
            (
                HAND_WRITTEN.replace("\"median\": 220.0", "\"median\": 999.0"),
                "per_run.tc-ingress.followed_ns",
            ),
            (
                HAND_WRITTEN.replace("\"hi\": 7900.0", "\"hi\": 1e999"),
                "is not valid JSON",
            ),
            (
                HAND_WRITTEN.replace("\"lo\": 1.1,", "\"lo\": 0.0,"),
                "ratios.held_rtt",
            ),
        ];
        for (i, (text, field)) in cases.iter().enumerate() {
            let path = write(&format!("bad{i}"), text);
            let err = load(&path).unwrap_err().to_string();
            assert!(
                err.contains(&path.display().to_string()) && err.contains(field),
                "{err}"
            );
            std::fs::remove_file(path).unwrap();
        }
        let path = write("schema", &HAND_WRITTEN.replace("/v1", "/v7"));
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("netprof.calibration/v7"), "{err}");
        std::fs::remove_file(path).unwrap();
    }

    const AS_IS: CpuIdle = CpuIdle::AsIs;

    fn at(interval_s: Option<f64>, name: &str) -> CalibrationFile {
        let mut file = load(&write(name, HAND_WRITTEN)).unwrap();
        std::fs::remove_file(&file.path).unwrap();
        file.calibration.ping_interval_s = interval_s;
        file.path = PathBuf::from(name);
        file
    }

    /// A split of 10 ms pings takes the 10 ms calibration over the 2 ms one; with 50 ms and
    /// 20 ms at hand it takes the nearer by ratio and says it is not exact. One without an interval is the last resort.
    #[test]
    fn a_split_takes_the_calibration_of_its_own_ping_interval() {
        let files = [
            at(Some(0.002), "2ms"),
            at(Some(0.01), "10ms"),
            at(None, "unknown"),
        ];
        let c = for_pings(&files, 0.01, AS_IS).unwrap();
        assert_eq!((c.file.path.to_str(), c.exact), (Some("10ms"), true));
        assert!(mismatch_note("x", &c, 0.01, AS_IS).is_none());
        let c = for_pings(&files, 0.002, AS_IS).unwrap();
        assert_eq!((c.file.path.to_str(), c.exact), (Some("2ms"), true));
        let far = [at(Some(0.05), "50ms"), at(Some(0.02), "20ms")];
        let c = for_pings(&far, 0.01, AS_IS).unwrap();
        assert_eq!((c.file.path.to_str(), c.exact), (Some("20ms"), false));
        let note = mismatch_note("the split", &c, 0.01, AS_IS).unwrap();
        assert!(
            note.contains("10 ms apart") && note.contains("pings 20 ms apart"),
            "{note}"
        );
        let c = for_pings(&files[2..], 0.01, AS_IS).unwrap();
        assert_eq!((c.file.path.to_str(), c.exact), (Some("unknown"), false));
        assert!(for_pings(&[], 0.01, AS_IS).is_none());
        assert_eq!(warmest(&files).map(|f| f.path.to_str()), Some(Some("2ms")));
        let path = write("zero", &HAND_WRITTEN.replace("0.002", "0"));
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("ping_interval_s"), "{err}");
        std::fs::remove_file(path).unwrap();
    }

    /// A split with the CPUs polling takes a polling calibration over one at its own interval
    /// with them halting, and calls any other inexact, naming both settings.
    #[test]
    fn a_split_takes_the_calibration_of_its_own_cpu_idle() {
        let mut poll = at(Some(0.002), "2ms-poll");
        poll.calibration.cpu_idle = Some(CpuIdle::Poll);
        let files = [at(Some(0.01), "10ms"), poll];
        let c = for_pings(&files, 0.01, CpuIdle::Poll).unwrap();
        assert_eq!((c.file.path.to_str(), c.exact), (Some("2ms-poll"), false));
        let mut exact = files[1].clone();
        exact.calibration.ping_interval_s = Some(0.01);
        let both = [files[0].clone(), exact];
        let c = for_pings(&both, 0.01, CpuIdle::Poll).unwrap();
        assert_eq!((c.file.path.to_str(), c.exact), (Some("2ms-poll"), true));
        let c = for_pings(&files[..1], 0.01, CpuIdle::Poll).unwrap();
        assert!(!c.exact);
        let note = mismatch_note("the split", &c, 0.01, CpuIdle::Poll).unwrap();
        assert!(
            note.contains("CPUs idling poll") && note.contains("with them as-is"),
            "{note}"
        );
    }

    #[test]
    fn interval_arithmetic_keeps_the_bounds_ordered() {
        let a = Interval {
            median: 10.0,
            lo: 8.0,
            hi: 13.0,
        };
        let b = Interval {
            median: 4.0,
            lo: 3.0,
            hi: 6.0,
        };
        assert_eq!(
            a.minus(b),
            Interval {
                median: 6.0,
                lo: 2.0,
                hi: 10.0
            }
        );
        assert_eq!(
            a.scaled(-1.0),
            Interval {
                median: -10.0,
                lo: -13.0,
                hi: -8.0
            }
        );
    }
}
