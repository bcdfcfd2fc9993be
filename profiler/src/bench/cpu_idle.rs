//! Whether the CPUs may sleep between the benchmarks' packets.
//!
//! Pings 10 ms apart leave the CPUs idle between echo requests. Waking an idle CPU, and the
//! caches it finds cold (on a virtual machine the host runs other work on that core
//! meanwhile), is part of every RTT then, and its size changes in spells that last a few
//! hundred ms: on a 2-CPU guest the p50 of 20 pings on one path went from 5 µs to 60 µs and
//! back within seconds, and a pod path's p50 delta over the host path was known only to
//! ±15 µs per run. Holding a CPU latency request of 0 µs (`/dev/cpu_dma_latency`, the PM QoS
//! interface tuned's latency profiles use) makes the idle governor poll instead of halting:
//! the same delta then repeats to ±1-2 µs, and it is smaller, since what it no longer holds is
//! the wake-up and cold-cache cost the longer path pays more of.
//!
//! Neither is the one true RTT: real nodes idle between pings too, which `AsIs` keeps. `Poll`
//! measures the datapath's own cost with the CPUs awake. The choice is recorded in every mode
//! file and calibration, and the report refuses to set one against the other.
//!
//! The request lasts while the file stays open; the kernel drops it when the descriptor is
//! closed, so no exit path (Ctrl-C, a panic, SIGKILL) can leave it behind.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// What the CPUs do between packets while netprof measures.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum CpuIdle {
    /// Whatever the machine's idle governor chooses (halting, deeper C-states).
    #[default]
    AsIs,
    /// Poll: no CPU enters an idle state that takes time to leave.
    Poll,
}

impl CpuIdle {
    pub fn name(self) -> &'static str {
        match self {
            CpuIdle::AsIs => "as-is",
            CpuIdle::Poll => "poll",
        }
    }
}

impl std::fmt::Display for CpuIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

const QOS_DEVICE: &str = "/dev/cpu_dma_latency";
const CPUIDLE: &str = "/sys/devices/system/cpu/cpuidle/current_driver";
const CPU0_STATES: &str = "/sys/devices/system/cpu/cpu0/cpuidle";

#[derive(Debug, thiserror::Error)]
pub enum CpuIdleError {
    #[error("--cpu-idle poll: this kernel has no cpuidle driver ({path}: {why}), so a latency request cannot keep the CPUs from halting; run with --cpu-idle as-is")]
    NoDriver { path: PathBuf, why: String },
    #[error("--cpu-idle poll: the cpuidle driver {driver} offers no state that is left at once (no state with latency 0 under {states}); run with --cpu-idle as-is")]
    NoPollState { driver: String, states: PathBuf },
    #[error("--cpu-idle poll: cannot hold a CPU latency request on {path}: {source} (it needs root); run with --cpu-idle as-is")]
    Request {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// While alive, the CPUs poll when idle (with [`CpuIdle::Poll`]); dropping it ends that.
#[must_use]
pub struct IdleHold {
    _request: Option<File>,
}

/// Puts `idle` in force until the returned hold drops.
pub fn hold(idle: CpuIdle) -> Result<IdleHold, CpuIdleError> {
    hold_at(
        idle,
        Path::new(CPUIDLE),
        Path::new(CPU0_STATES),
        Path::new(QOS_DEVICE),
    )
}

fn hold_at(
    idle: CpuIdle,
    driver_file: &Path,
    states: &Path,
    device: &Path,
) -> Result<IdleHold, CpuIdleError> {
    if idle == CpuIdle::AsIs {
        return Ok(IdleHold { _request: None });
    }
    let driver = std::fs::read_to_string(driver_file)
        .map_err(|e| CpuIdleError::NoDriver {
            path: driver_file.to_path_buf(),
            why: e.to_string(),
        })?
        .trim()
        .to_owned();
    if driver.is_empty() || driver == "none" {
        return Err(CpuIdleError::NoDriver {
            path: driver_file.to_path_buf(),
            why: format!("driver {driver:?}"),
        });
    }
    if !has_poll_state(states) {
        return Err(CpuIdleError::NoPollState {
            driver,
            states: states.to_path_buf(),
        });
    }
    let request = |source| CpuIdleError::Request {
        path: device.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(request)?;
    // The device takes the request as a binary s32 in µs.
    file.write_all(&0i32.to_ne_bytes()).map_err(request)?;
    Ok(IdleHold {
        _request: Some(file),
    })
}

/// Whether one of the CPU's idle states has an exit latency of 0 (the polling state).
fn has_poll_state(states: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(states) else {
        return false;
    };
    entries
        .filter_map(Result::ok)
        .any(|e| std::fs::read_to_string(e.path().join("latency")).is_ok_and(|l| l.trim() == "0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        root: PathBuf,
    }

    impl Fake {
        fn new(tag: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("netprof-cpu-idle-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("states")).unwrap();
            Fake { root }
        }
        fn state(&self, n: u32, latency: &str) {
            let dir = self.root.join(format!("states/state{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("latency"), latency).unwrap();
        }
        fn driver(&self, name: &str) {
            std::fs::write(self.root.join("driver"), name).unwrap();
        }
        fn hold(&self, idle: CpuIdle) -> Result<IdleHold, CpuIdleError> {
            hold_at(
                idle,
                &self.root.join("driver"),
                &self.root.join("states"),
                &self.root.join("device"),
            )
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn as_is_touches_nothing() {
        let fake = Fake::new("as-is");
        assert!(fake.hold(CpuIdle::AsIs).is_ok());
        assert!(!fake.root.join("device").exists());
    }

    #[test]
    fn poll_writes_a_zero_latency_request_and_holds_it_open() {
        let fake = Fake::new("poll");
        fake.driver("haltpoll\n");
        fake.state(0, "0\n");
        fake.state(1, "1\n");
        std::fs::write(fake.root.join("device"), b"").unwrap();
        let held = fake.hold(CpuIdle::Poll).unwrap();
        assert_eq!(
            std::fs::read(fake.root.join("device")).unwrap(),
            [0, 0, 0, 0]
        );
        assert!(held._request.is_some());
    }

    #[test]
    fn poll_is_refused_where_it_would_change_nothing() {
        let fake = Fake::new("refused");
        let err = fake.hold(CpuIdle::Poll).err().unwrap().to_string();
        assert!(
            err.contains("no cpuidle driver") && err.contains("as-is"),
            "{err}"
        );
        fake.driver("none\n");
        let err = fake.hold(CpuIdle::Poll).err().unwrap().to_string();
        assert!(err.contains("no cpuidle driver"), "{err}");
        fake.driver("intel_idle\n");
        fake.state(1, "2\n");
        let err = fake.hold(CpuIdle::Poll).err().unwrap().to_string();
        assert!(err.contains("no state with latency 0"), "{err}");
        fake.state(0, "0\n");
        let err = fake.hold(CpuIdle::Poll).err().unwrap().to_string();
        assert!(
            err.contains("cannot hold") && err.contains("device"),
            "{err}"
        );
    }

    #[test]
    fn the_names_are_the_flags_and_the_json() {
        assert_eq!(serde_json::to_string(&CpuIdle::AsIs).unwrap(), "\"as-is\"");
        assert_eq!(serde_json::to_string(&CpuIdle::Poll).unwrap(), "\"poll\"");
        assert_eq!(CpuIdle::Poll.to_string(), "poll");
    }
}
