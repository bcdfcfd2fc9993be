//! The kernel matrix: boots each pinned Debian cloud kernel under qemu with an initramfs made
//! of the fresh `netprof` binary and the lab's tools, runs the scenarios inside
//! ([`guest`]), and brings the results back as files for `tests/vm_matrix.rs`.
//!
//! The host kernel is not touched (qemu emulates), so the matrix needs no kernel lock. Each VM
//! runs on one host thread, so the kernels boot side by side.

pub mod guest;
mod initramfs;
mod kernels;
mod qemu;
mod scenarios;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::run::{cargo, workspace_root};

/// What the host-side test reads: the results directory (set by `cargo xtask test` and
/// `cargo xtask vm`).
pub const RESULTS_ENV: &str = "NETPROF_VM_RESULTS";

/// Boot to power-off, per kernel. A whole run takes 3-4 minutes with both kernels booted side
/// by side on two CPUs, and 7 once a build ran beside them (6.12 was cut off at 420 s in its
/// last scenario); this leaves room for a loaded machine and still ends a hung guest well
/// inside CI's time.
const VM_TIMEOUT: Duration = Duration::from_secs(900);

/// The default results directory, `target/vm-matrix`.
pub fn default_out() -> PathBuf {
    workspace_root().join("target/vm-matrix")
}

/// `cargo xtask vm`: build `netprof`, run the matrix, then the host-side test on its results.
pub fn task(kernels: &str, out: &Path, netprof: Option<PathBuf>) -> Result<()> {
    let netprof = match netprof {
        Some(path) => path,
        None => build_netprof()?,
    };
    matrix(kernels, &netprof, out)?;
    let mut test = cargo();
    test.args(["test", "--package", "netprof-tests", "--test", "vm_matrix"])
        .args(["--", "--nocapture"])
        .env(RESULTS_ENV, out)
        .current_dir(workspace_root());
    checked(test)
}

/// The optimized `netprof` (what a cluster runs), built (incrementally) first. Under
/// emulation a debug build's BTF parsing alone takes most of a minute per agent start.
pub fn build_netprof() -> Result<PathBuf> {
    let mut build = cargo();
    build
        .args(["build", "--release", "--package", "netprof"])
        .current_dir(workspace_root());
    checked(build)?;
    Ok(workspace_root().join("target/release/netprof"))
}

/// Runs the matrix for `kernels` (`all` or ids) with `netprof`, results into `out`. A kernel
/// that cannot be fetched fails the run; a guest that fails is recorded in `manifest.json`
/// for the test to report.
pub fn matrix(kernels: &str, netprof: &Path, out: &Path) -> Result<()> {
    let started = Instant::now();
    let selected = kernels::select(kernels)?;
    if !netprof.is_file() {
        bail!(
            "{} is missing: build it first (`cargo build -p netprof`)",
            netprof.display()
        );
    }
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("cannot remove {}", out.display()))?;
    }
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let unpacked: Vec<_> = selected.iter().map(|k| k.ensure()).collect::<Result<_>>()?;
    let tools = out.join("tools.cpio.zst");
    initramfs::tools_archive(netprof, out, &tools)?;
    eprintln!(
        "vm: initramfs tools archive built ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    // One host thread per VM (see `qemu`): the kernels boot side by side.
    let records: Vec<Value> = std::thread::scope(|scope| {
        let running: Vec<_> = unpacked
            .iter()
            .map(|kernel| scope.spawn(|| run_kernel(kernel, &tools, out)))
            .collect();
        running
            .into_iter()
            .map(|vm| vm.join().expect("a VM thread panicked"))
            .collect()
    });
    fs::remove_file(&tools)?;
    let manifest = json!({
        "netprof": binary_identity(netprof)?,
        "kernels": records,
        "seconds": started.elapsed().as_secs_f64(),
    });
    fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    eprintln!(
        "vm: matrix done in {:.0} s; results in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// One kernel: its initramfs, the boot, and a manifest record (`error` when it failed).
fn run_kernel(kernel: &kernels::Unpacked, tools: &Path, out: &Path) -> Value {
    let k = kernel.kernel;
    let dir = out.join(k.id);
    let started = Instant::now();
    let result = (|| -> Result<qemu::Booted> {
        fs::create_dir_all(&dir)?;
        let modules = initramfs::modules_archive(kernel)?;
        let initrd = dir.join("initramfs.cpio.zst");
        concat(&[tools, &modules], &initrd)?;
        eprintln!("vm: booting {} ({})", k.id, k.release);
        let nf_links = kernel.config_facts()["CONFIG_NETFILTER_BPF_LINK"] == "y";
        let params = format!(
            "{}={}",
            scenarios::NF_LINKS_PARAM,
            if nf_links { "y" } else { "n" }
        );
        let booted = qemu::boot(&qemu::Boot {
            vmlinuz: &kernel.vmlinuz(),
            initramfs: &initrd,
            dir: &dir,
            timeout: VM_TIMEOUT,
            params: &params,
        });
        fs::remove_file(&initrd)?;
        booted
    })();
    let mut record = json!({
        "id": k.id,
        "package": k.package,
        "version": k.version,
        "release": k.release,
        "seconds": started.elapsed().as_secs_f64(),
        "console": dir.join("console.log"),
        "config": kernel.config_facts(),
    });
    match result {
        Ok(booted) => {
            eprintln!(
                "vm: {} finished in {:.0} s (VM {:.0} s)",
                k.id,
                started.elapsed().as_secs_f64(),
                booted.seconds
            );
            record["vm_seconds"] = json!(booted.seconds);
            record["results"] = json!(booted.results);
            report_steps(k.id, &booted.results);
        }
        Err(err) => {
            eprintln!("vm: {} FAILED: {err:#}", k.id);
            record["error"] = json!(format!("{err:#}"));
        }
    }
    record
}

/// Prints the guest's failed steps (the test judges; this is for the reader of the log).
fn report_steps(kernel: &str, results: &Path) {
    let Ok(text) = fs::read_to_string(results.join("summary.json")) else {
        eprintln!("vm: {kernel}: the guest wrote no summary.json");
        return;
    };
    let Ok(summary) = serde_json::from_str::<Value>(&text) else {
        return;
    };
    let scenarios = summary["scenarios"].as_array().cloned().unwrap_or_default();
    for scenario in scenarios {
        for step in scenario["steps"].as_array().cloned().unwrap_or_default() {
            if step["ok"] != true {
                eprintln!(
                    "vm: {kernel}: {} {}: {}",
                    scenario["name"].as_str().unwrap_or("?"),
                    step["step"].as_str().unwrap_or("?"),
                    step["detail"].as_str().unwrap_or("")
                );
            }
        }
    }
}

/// Size and modification time of the binary the matrix ran, so the test can tell stale
/// results from fresh ones.
pub fn binary_identity(path: &Path) -> Result<Value> {
    let meta = fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let modified = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos()
        .to_string();
    Ok(json!({"path": path, "size": meta.len(), "modified_ns": modified}))
}

/// Concatenates files (the kernel unpacks concatenated compressed cpio archives in turn).
fn concat(parts: &[&Path], out: &Path) -> Result<()> {
    let mut file =
        fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    for part in parts {
        let mut input =
            fs::File::open(part).with_context(|| format!("cannot read {}", part.display()))?;
        std::io::copy(&mut input, &mut file)?;
    }
    Ok(())
}

fn checked(mut command: Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}
