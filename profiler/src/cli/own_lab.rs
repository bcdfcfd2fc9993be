//! A command that builds a lab of its own, works on it and removes it: after the work, after a
//! failure, and on SIGINT/SIGTERM (then the command fails with "interrupted").

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::bench::BenchError;
use crate::lab::{self, Lab, LabLock, LabNames, LabSpec, Mode};

/// Builds `mode`'s lab named `lab_name` (under its lock) and runs `work` on it with a work
/// directory for its servers (`/run/netprof/labs/<lab>/<work_dir>`, removed with the lab).
pub fn on_own_lab<T>(
    lab_name: &str,
    mode: Mode,
    work_dir: &str,
    work: impl AsyncFnOnce(&Lab, PathBuf) -> Result<T, BenchError>,
) -> Result<T> {
    let names = LabNames::new(lab_name)?;
    lab::require_root()?;
    let _lock = LabLock::acquire(lab_name)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let built = lab::up(&names, LabSpec { mode, services: 0 })?;
    let dir = PathBuf::from("/run/netprof/labs")
        .join(lab_name)
        .join(work_dir);
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = work(&built, dir) => result.map(Some),
            signal = super::bench::shutdown_signal() => {
                eprintln!("\nnetprof: {signal}: stopping and removing the lab");
                Ok(None)
            }
        }
    });
    let teardown = lab::down(&names);
    let value = outcome?.context("interrupted; the lab was removed")?;
    teardown?;
    Ok(value)
}
