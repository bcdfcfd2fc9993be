//! `cargo xtask test`: rustfmt and clippy first, then every test binary, each run on its own
//! (serially: the tests share the kernel), counted test by test from libtest's own lines.
//!
//! The binaries are run directly rather than through `cargo test`, so a binary that dies
//! (a signal, or an exit without libtest's `test result:` line) is known by name and status,
//! and one failing binary never stops the others (what `--no-fail-fast` gives cargo). Cargo
//! builds them (`cargo test --no-run`) and names their executables; each runs from its
//! package's directory with `CARGO_MANIFEST_DIR` and `CARGO_PKG_NAME` set, as cargo runs them.

mod args;
mod binaries;
pub mod libtest;
mod summary;
#[cfg(test)]
mod tests;

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};

use crate::run::{cargo, run, workspace_root};
use binaries::TestBinary;
use summary::{BinaryResult, Totals};

pub fn test(user_args: &[String]) -> Result<()> {
    let args = args::split(user_args)?;
    lint()?;
    // The CLI tests run the real `netprof` binary, which `cargo test` alone does not build.
    let mut build = cargo();
    build.args(["build", "--package", "netprof"]);
    run(build)?;
    let binaries = binaries::build(&args.cargo)?;
    let mut results = Vec::new();
    for binary in &binaries {
        let mut env = Vec::new();
        if binary.kind == "test" && binary.name == VM_MATRIX_TEST {
            match kernel_matrix() {
                Ok(results) => env.push((crate::vm::RESULTS_ENV, results)),
                Err(err) => {
                    // The test then says it has no results: a failure, named with the cause.
                    eprintln!("kernel matrix: {err:#}");
                    results.push(BinaryResult::failed_to_start(
                        binary.label(),
                        format!("the kernel matrix did not run: {err:#}"),
                    ));
                    continue;
                }
            }
        }
        eprintln!("     Running {}", binary.label());
        results.push(run_binary(binary, &args.test, &env)?);
    }
    if args.runs_doc_tests() {
        eprintln!("     Running doc tests (cargo test --doc)");
        results.push(run_doc_tests()?);
    }
    let totals = Totals::of(&results);
    print!("{}", totals.render());
    totals.verdict()
}

/// The host-side test of the kernel matrix; it judges the results the VMs bring back.
const VM_MATRIX_TEST: &str = "vm_matrix";

/// Boots every pinned kernel with the optimized `netprof` and returns where the results are,
/// unless `NETPROF_VM_RESULTS` already names results to judge (`cargo xtask vm --out`).
fn kernel_matrix() -> Result<std::path::PathBuf> {
    if let Some(given) = std::env::var_os(crate::vm::RESULTS_ENV) {
        return Ok(given.into());
    }
    eprintln!("     Running the kernel matrix (cargo xtask vm)");
    let netprof = crate::vm::build_netprof()?;
    let out = crate::vm::default_out();
    crate::vm::matrix("all", &netprof, &out)?;
    Ok(out)
}

/// rustfmt and clippy, before anything runs: main is kept clean of both.
fn lint() -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    if !status_of(fmt)?.success() {
        bail!("the code is not in rustfmt's shape (diff above): run `cargo fmt --all`");
    }
    let mut clippy = cargo();
    clippy.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
    if !status_of(clippy)?.success() {
        bail!(
            "clippy found problems (above): fix them, then check with \
             `cargo clippy --all-targets -- -D warnings`"
        );
    }
    Ok(())
}

fn status_of(mut command: Command) -> Result<ExitStatus> {
    let shown = format!("{command:?}");
    command
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot start {shown}"))
}

/// Runs one test binary serially and uncaptured, echoing its output as it comes, and reads
/// its verdicts.
fn run_binary(
    binary: &TestBinary,
    test_args: &[String],
    env: &[(&str, std::path::PathBuf)],
) -> Result<BinaryResult> {
    let mut command = Command::new(&binary.executable);
    command
        .args(["--test-threads=1", "--nocapture"])
        .args(test_args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&binary.package_dir)
        .env("CARGO_MANIFEST_DIR", &binary.package_dir)
        .env("CARGO_PKG_NAME", &binary.package);
    let (status, parser) = stream(command, &binary.label())?;
    let (runs, stray_skips) = parser.finish();
    Ok(BinaryResult::new(binary.label(), status, runs, stray_skips))
}

/// `cargo test --doc` for the default members, read like a binary (one libtest run per
/// crate). Cargo reports a dead doc-test harness only in its status.
fn run_doc_tests() -> Result<BinaryResult> {
    let mut command = cargo();
    command
        .args(["test", "--doc", "--", "--test-threads=1", "--nocapture"])
        .current_dir(workspace_root());
    let (status, parser) = stream(command, "doc tests")?;
    let (runs, stray_skips) = parser.finish();
    Ok(BinaryResult::new(
        "doc tests".to_owned(),
        status,
        runs,
        stray_skips,
    ))
}

/// Runs `command` with its stdout piped: every chunk is echoed at once (a test's header shows
/// while it runs) and complete lines go to the parser. Stderr goes straight through.
fn stream(mut command: Command, label: &str) -> Result<(ExitStatus, libtest::Parser)> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {label} ({command:?})"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut parser = libtest::Parser::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut echo = std::io::stdout();
    loop {
        let n = stdout
            .read(&mut chunk)
            .with_context(|| format!("reading the output of {label}"))?;
        if n == 0 {
            break;
        }
        echo.write_all(&chunk[..n])?;
        echo.flush()?;
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            parser.line(String::from_utf8_lossy(&line[..end]).as_ref());
        }
    }
    if !pending.is_empty() {
        parser.line(String::from_utf8_lossy(&pending).as_ref());
        println!();
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {label}"))?;
    Ok((status, parser))
}
