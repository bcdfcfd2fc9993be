//! `overhead`: build, then run the overhead comparison; the helpers every task uses to build
//! and run (`demo` and `test` are in their own modules).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::setup::cargo_env;

pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(crate) fn run(mut command: Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub(crate) fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cargo_env(&mut command);
    command
}

/// Builds the optimized `netprof` and returns a command for it.
pub(crate) fn release_netprof() -> Result<Command> {
    let mut build = cargo();
    build.args(["build", "--release", "--package", "netprof"]);
    run(build)?;
    Ok(Command::new(
        workspace_root().join("target/release/netprof"),
    ))
}

pub fn overhead(overhead_args: &[String]) -> Result<()> {
    let mut overhead = release_netprof()?;
    overhead.arg("overhead").args(overhead_args);
    run(overhead)
}
