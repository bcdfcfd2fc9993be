//! `cargo xtask demo [--repeat K] [bench args]`: the main job. Every mode profiled, beside a
//! clean twin of every lab that no agent attaches to (the study's table with nothing attached,
//! measured in the same minutes as the profile), and the attributed report as a table and as
//! `<out>/report.html`.
//!
//! With `--repeat K` (K > 1) the pass runs K times, into `<out>/repeat-<k>/` (its twins into
//! `<out>/repeat-<k>/clean/`); the report takes each stage's median over the repeats.
//! `--validate` runs once, in the last repeat. Where the bench arguments leave the twins out
//! (duty-cycled agents, `--ping-blocks 1`, `--no-clean-twins`: the modes then run one after
//! the other or without them), a separate pass without agents runs after each profiled one.
//!
//! netprof's in-path cost is calibrated on a lab of its own: after the pass with one repeat;
//! with repeats, a few rounds after each repeat, added up into one calibration, since the
//! machine's speed drifts over tens of minutes (a flannel-vxlan pod p50 without agents went from
//! 73-78 µs to 115-140 µs within an hour here) and a calibration taken after all repeats
//! measured another machine than the one the passes ran on.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::run::{release_netprof, run, workspace_root};

/// The value of `--flag V` or `--flag=V` among the arguments.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == flag {
            return it.next().map(String::as_str);
        }
        if let Some(v) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            return Some(v);
        }
    }
    None
}

/// The arguments without `--flag V` / `--flag=V` and without the bare `drop` flags.
fn without(args: &[String], flags: &[&str], drop: &[&str]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let with_value = flags
            .iter()
            .any(|f| arg.strip_prefix(f).is_some_and(|r| r.starts_with('=')));
        if flags.contains(&arg.as_str()) {
            it.next();
        } else if !with_value && !drop.contains(&arg.as_str()) {
            kept.push(arg.clone());
        }
    }
    kept
}

/// The demo's own options, taken out of the arguments meant for `netprof bench`.
struct DemoArgs {
    repeat: u32,
    out: PathBuf,
    validate: bool,
    /// What both passes get (no `--out`, `--profile`, `--validate`, `--repeat`).
    common: Vec<String>,
}

fn parse(args: &[String]) -> Result<DemoArgs> {
    let repeat = match flag_value(args, "--repeat") {
        None => 1,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|k| (1..=20).contains(k))
            .with_context(|| format!("--repeat {v}: give a number of repeats from 1 to 20"))?,
    };
    // A fresh directory by default: a report reads everything in its directory, so a second
    // demo into the first one's would mix them.
    let out = flag_value(args, "--out").map_or_else(
        || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from("netprof-out").join(format!("demo-{now}"))
        },
        PathBuf::from,
    );
    // The passes run from the workspace root: a relative --out means the same place for all.
    let out = if out.is_absolute() {
        out
    } else {
        workspace_root().join(out)
    };
    Ok(DemoArgs {
        repeat,
        out,
        validate: args.iter().any(|a| a == "--validate"),
        common: without(args, &["--out", "--repeat"], &["--profile", "--validate"]),
    })
}

fn refuse_used(out: &Path) -> Result<()> {
    let used = std::fs::read_dir(out).map(|mut d| d.next().is_some());
    if let Ok(true) = used {
        bail!(
            "{} already holds files: give a new --out DIR (or remove it); the report reads everything in its directory, so two runs would mix",
            out.display()
        );
    }
    Ok(())
}

fn netprof() -> Command {
    Command::new(workspace_root().join("target/release/netprof"))
}

/// One `netprof bench --modes all` pass into `dir`, profiled or not.
fn pass(args: &DemoArgs, dir: &Path, profiled: bool, validate: bool) -> Result<()> {
    let mut bench = netprof();
    bench.args(["bench", "--modes", "all"]).args(&args.common);
    if profiled {
        bench.arg("--profile");
    }
    if validate {
        bench.arg("--validate");
    }
    bench.arg("--out").arg(dir);
    run(bench)
}

/// The profiled pass into `dir`, and a pass without agents into `dir/clean` when the profiled
/// one measured no clean twins there.
fn passes(args: &DemoArgs, dir: &Path, validate: bool) -> Result<()> {
    pass(args, dir, true, validate)?;
    if !dir.join("clean").exists() {
        println!(
            "demo: the profiled pass ran without clean twins; the modes again without agents, into {}",
            dir.join("clean").display()
        );
        pass(args, &dir.join("clean"), false, false)?;
    }
    Ok(())
}

/// Calibration rounds in all: a repeat's share is this over the repeats, rounded up.
const CALIBRATION_ROUNDS: u32 = 8;

/// The ping interval the passes in `dir` used (`config.ping_interval_s` of a mode file there).
fn ping_interval_of(dir: &Path) -> Result<f64> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let doc: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", file.display()))?;
        if let Some(s) = doc["config"]["ping_interval_s"].as_f64() {
            return Ok(s);
        }
    }
    bail!(
        "{}: no mode file with config.ping_interval_s",
        dir.display()
    )
}

/// `rounds` calibration rounds at `interval_s` into `out`'s calibration, added to the rounds
/// already there when `append`.
fn calibrate(out: &Path, interval_s: f64, rounds: u32, append: bool) -> Result<()> {
    let mut calibrate = netprof();
    calibrate
        .args(["overhead", "--calibrate"])
        .arg(out)
        .args(["--calibrate-ping-interval", &interval_s.to_string()])
        .args(["--rounds", &rounds.to_string()]);
    if append {
        calibrate.arg("--calibrate-append");
    }
    run(calibrate)
}

pub fn demo(bench_args: &[String]) -> Result<()> {
    let args = parse(bench_args)?;
    refuse_used(&args.out)?;
    release_netprof()?;
    // The modes profiled, with the study's table as the tools measure it with nothing attached
    // (the agents' cost would be inside every number) from the clean twins, and the report.
    if args.repeat == 1 {
        passes(&args, &args.out, args.validate)?;
    } else {
        for k in 1..=args.repeat {
            let dir = args.out.join(format!("repeat-{k}"));
            passes(&args, &dir, args.validate && k == args.repeat)?;
            // This repeat's share of the calibration, while the machine runs as it just did.
            let interval = ping_interval_of(&dir.join("clean"))?;
            calibrate(&args.out, interval, rounds_per_repeat(args.repeat), k > 1)?;
        }
    }
    if args.repeat == 1 {
        // netprof's in-path cost measured on a lab of its own, for the report's clean split
        // (at every interval the run pinged at).
        let mut calibrate = netprof();
        calibrate.args(["overhead", "--calibrate"]).arg(&args.out);
        run(calibrate)?;
    } else if args.validate {
        let last = args.out.join(format!("repeat-{}", args.repeat));
        let validate = std::fs::read_to_string(last.join("validate.json"))
            .with_context(|| format!("cannot read {}/validate.json", last.display()))?;
        let validate: serde_json::Value = serde_json::from_str(&validate)
            .with_context(|| format!("{}/validate.json: not valid JSON", last.display()))?;
        let interval = validate["config"]["ping_interval_s"]
            .as_f64()
            .with_context(|| {
                format!(
                    "{}/validate.json: no config.ping_interval_s",
                    last.display()
                )
            })?;
        calibrate(&args.out, interval, CALIBRATION_ROUNDS, false)?;
    }
    let mut table = netprof();
    table
        .arg("report")
        .arg(&args.out)
        .args(["--format", "table"]);
    run(table)?;
    let html = args.out.join("report.html");
    let mut page = netprof();
    page.arg("report")
        .arg(&args.out)
        .args(["--format", "html", "--out"])
        .arg(&html);
    run(page)?;
    println!("HTML report: {}", html.display());
    Ok(())
}

/// A repeat's share of [`CALIBRATION_ROUNDS`], rounded up.
fn rounds_per_repeat(repeats: u32) -> u32 {
    CALIBRATION_ROUNDS.div_ceil(repeats.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calibration_rounds_are_spread_over_the_repeats() {
        assert_eq!(rounds_per_repeat(1), 8);
        assert_eq!(rounds_per_repeat(3), 3);
        assert_eq!(rounds_per_repeat(20), 1);
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_demos_own_flags_are_taken_out_of_the_bench_arguments() {
        let a = parse(&strings(&[
            "--services",
            "10",
            "--repeat",
            "3",
            "--out=/tmp/x",
            "--validate",
            "--profile",
        ]))
        .unwrap();
        assert_eq!(
            (a.repeat, a.out.as_path(), a.validate),
            (3, Path::new("/tmp/x"), true)
        );
        assert_eq!(a.common, ["--services", "10"]);
        let a = parse(&strings(&["--out", "/tmp/y"])).unwrap();
        assert_eq!((a.repeat, a.common.len()), (1, 0));
        assert!(parse(&strings(&["--repeat", "0"]))
            .err()
            .unwrap()
            .to_string()
            .contains("--repeat 0"));
        assert!(parse(&[])
            .unwrap()
            .out
            .starts_with(workspace_root().join("netprof-out")));
    }
}
