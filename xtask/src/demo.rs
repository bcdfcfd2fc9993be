//! `cargo xtask demo`: the main job. The study's table with nothing attached, the same modes
//! profiled, and the attributed report as a table and as `<out>/report.html`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::run::{release_netprof, run, workspace_root};

/// The `--out` directory among bench's arguments (bench's default when absent).
fn out_dir(bench_args: &[String]) -> PathBuf {
    let mut args = bench_args.iter();
    while let Some(arg) = args.next() {
        if arg == "--out" {
            if let Some(dir) = args.next() {
                return PathBuf::from(dir);
            }
        } else if let Some(dir) = arg.strip_prefix("--out=") {
            return PathBuf::from(dir);
        }
    }
    PathBuf::from("netprof-out")
}

/// `bench_args` without `--out DIR` and without the flags that attach agents.
fn clean_pass_args(bench_args: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut args = bench_args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => {
                args.next();
            }
            "--profile" | "--validate" => {}
            a if a.starts_with("--out=") => {}
            _ => kept.push(arg.clone()),
        }
    }
    kept
}

pub fn demo(bench_args: &[String]) -> Result<()> {
    // First the study's table as the tools measure it with nothing attached (the agents' cost
    // would be inside every number), then the same modes profiled, and the attributed report.
    let mut clean = release_netprof()?;
    clean
        .args(["bench", "--modes", "all"])
        .args(clean_pass_args(bench_args));
    clean.arg("--out").arg(out_dir(bench_args).join("clean"));
    run(clean)?;
    let mut bench = Command::new(workspace_root().join("target/release/netprof"));
    bench.args(["bench", "--modes", "all"]);
    // The report attributes only what the agents profiled.
    if !bench_args.iter().any(|a| a == "--profile") {
        bench.arg("--profile");
    }
    bench.args(bench_args);
    run(bench)?;
    let out = out_dir(bench_args);
    let netprof = workspace_root().join("target/release/netprof");
    let mut table = Command::new(&netprof);
    table.arg("report").arg(&out).args(["--format", "table"]);
    run(table)?;
    let html = out.join("report.html");
    let mut page = Command::new(&netprof);
    page.arg("report")
        .arg(&out)
        .args(["--format", "html", "--out"])
        .arg(&html);
    run(page)?;
    let shown = if html.is_absolute() {
        html
    } else {
        workspace_root().join(html)
    };
    println!("HTML report: {}", shown.display());
    Ok(())
}
