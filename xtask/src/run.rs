//! `overhead` and `test`: build, then run the overhead comparison or the test suite; the
//! helpers every task uses to build and run (`demo` is in its own module).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

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

fn cargo() -> Command {
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

pub fn test(cargo_args: &[String]) -> Result<()> {
    // The CLI tests run the real `netprof` binary, which `cargo test` alone does not build.
    let mut build = cargo();
    build.args(["build", "--package", "netprof"]);
    run(build)?;
    let mut test = cargo();
    // Default members: the eBPF crate is built by profiler/build.rs, not for the host.
    // Serial (the tests share the kernel) and uncaptured, so every SKIPPED line is seen.
    test.arg("test")
        .args(cargo_args)
        .args(["--", "--test-threads=1", "--nocapture"]);
    test.current_dir(workspace_root()).stdout(Stdio::piped());
    let mut child = test.spawn().context("cannot start cargo test")?;
    let mut totals = Totals::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    // One closing line for all test binaries (cargo's own last line is the doc-tests' count).
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.skipped
    );
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if totals.passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

/// Sums libtest's `test result:` lines and the tests' own `SKIPPED` lines.
#[derive(Debug, Default)]
struct Totals {
    passed: u64,
    failed: u64,
    skipped: u64,
}

impl Totals {
    fn add(&mut self, line: &str) {
        if line.starts_with("SKIPPED") {
            self.skipped += 1;
        }
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                _ => {}
            }
        }
    }
}
