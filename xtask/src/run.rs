//! `demo` and `test`: build, then run the benchmark or the test suite.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::setup::cargo_env;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(mut command: Command) -> Result<()> {
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

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cargo_env(&mut command);
    command
}

pub fn demo(bench_args: &[String]) -> Result<()> {
    let mut build = cargo();
    build.args(["build", "--release", "--package", "netprof"]);
    run(build)?;
    let mut bench = Command::new(workspace_root().join("target/release/netprof"));
    bench.args(["bench", "--modes", "all"]);
    bench.args(bench_args);
    run(bench)
}

pub fn test(cargo_args: &[String]) -> Result<()> {
    // The CLI tests run the real `netprof` binary, which `cargo test` alone does not build.
    let mut build = cargo();
    build.args(["build", "--package", "netprof"]);
    run(build)?;
    let mut test = cargo();
    // Default members: the eBPF crate is built by profiler/build.rs, not for the host.
    test.arg("test").args(cargo_args).args(["--", "--test-threads=1"]);
    run(test)
}
