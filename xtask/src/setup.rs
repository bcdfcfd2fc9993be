//! Everything a fresh machine lacks, installed idempotently. Each step checks first, so a
//! machine that has everything passes in well under 5 s.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// The one list of Debian packages netprof needs, with why.
pub const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip, bridge, ss: builds the namespace lab"),
    (
        "iptables",
        "iptables-restore: kube-proxy's rules in the lab",
    ),
    ("procps", "sysctl: per-namespace forwarding, proxy ARP"),
    ("iputils-ping", "ping: the latency benchmark"),
    ("iperf3", "the bandwidth benchmark"),
    ("apache2-utils", "ab: the HTTP benchmark"),
    ("nginx-light", "the HTTP server (one worker, 612-byte page)"),
    ("conntrack", "inspecting conntrack state in lab namespaces"),
    ("ethtool", "inspecting lab devices (offloads)"),
    (
        "bpftool",
        "checking that no eBPF program is left attached (tests)",
    ),
    (
        "qemu-system-x86",
        "the kernel matrix boots Debian's 6.1 and 6.12 kernels under qemu (cargo xtask vm)",
    ),
    (
        "busybox-static",
        "the kernel matrix's guest shell and small utilities",
    ),
    (
        "kmod",
        "the kernel matrix: depmod for the guest's modules, modprobe inside it",
    ),
    (
        "cpio",
        "the kernel matrix packs the guest's initramfs with it",
    ),
    (
        "zstd",
        "the kernel matrix compresses the guest's initramfs with it",
    ),
    (
        "xz-utils",
        "the kernel matrix unpacks the 6.12 kernel's .ko.xz modules",
    ),
    (
        "chromium",
        "headless browser: the report's HTML is opened and checked in a test",
    ),
];

/// The bpf-linker release that builds against rustc's LLVM (see shared/PLATFORM.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    let started = Instant::now();
    debian_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    mount_if_missing("bpf", "/sys/fs/bpf", "pinning eBPF objects")?;
    mount_if_missing(
        "tracefs",
        "/sys/kernel/tracing",
        "tracepoint ids for the eBPF programs",
    )?;
    enough_disk_for_build()?;
    eprintln!(
        "setup: everything is present ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn is_root() -> bool {
    // /proc/self/status has the effective uid as the second field of "Uid:".
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
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

fn debian_packages() -> Result<()> {
    let names: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(name, _)| *name).collect();
    let mut query = Command::new("dpkg-query");
    query
        .args(["-W", "-f", "${Package} ${db:Status-Status}\n"])
        .args(&names);
    let listed = query
        .stderr(Stdio::null())
        .output()
        .context("dpkg-query is missing: netprof's setup expects a Debian-based machine")?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    let missing: Vec<&(&str, &str)> = DEBIAN_PACKAGES
        .iter()
        .filter(|(name, _)| !listed.lines().any(|l| l == format!("{name} installed")))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (name, why) in &missing {
        eprintln!("setup: installing Debian package {name} ({why})");
    }
    if !is_root() {
        bail!("installing Debian packages needs root: run `sudo cargo xtask setup`");
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    checked(update)?;
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(missing.iter().map(|(name, _)| *name));
    checked(install)
}

fn nightly_rust_src() -> Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    );
    match installed {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => Ok(()),
        Some(_) => {
            eprintln!("setup: adding rust-src to the nightly toolchain (the eBPF crate builds core for bpfel-unknown-none)");
            let mut add = Command::new("rustup");
            add.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
            checked(add)
        }
        None => {
            eprintln!("setup: installing the nightly toolchain with rust-src (the eBPF crate needs nightly)");
            let mut install = Command::new("rustup");
            install.args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]);
            checked(install)
        }
    }
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// Where the symlink to nightly's libLLVM lives; bpf-linker keeps an rpath to it.
fn llvm_prefix() -> PathBuf {
    cargo_home().join("netprof-llvm")
}

/// Adds ~/.cargo/bin to PATH for child cargo processes, so aya-build finds bpf-linker even
/// when the caller's PATH lacks it.
pub fn cargo_env(command: &mut Command) {
    let bin = cargo_home().join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if !dirs.contains(&bin) {
        dirs.insert(0, bin);
    }
    if let Ok(joined) = std::env::join_paths(dirs) {
        command.env("PATH", joined);
    }
}

fn bpf_linker() -> Result<()> {
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])
        .context("rustc +nightly does not run: the nightly toolchain is missing")?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot read {}", lib_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: the nightly toolchain is incomplete",
                lib_dir.display()
            )
        })?;
    let file_name = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .expect("matched as UTF-8")
        .to_owned();
    // bpf-linker links against `libLLVM.so` at build time and loads the versioned name at run
    // time, both through its rpath to this directory. A nightly update changes the library, so
    // the links are renewed every time and the binary is rebuilt only if it no longer runs.
    let prefix_lib = llvm_prefix().join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("cannot create {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", file_name.as_str()] {
        let link = prefix_lib.join(name);
        if fs::read_link(&link).is_ok_and(|target| target == libllvm) {
            continue;
        }
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    let binary = cargo_home().join("bin/bpf-linker");
    let works = Command::new(&binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Ok(());
    }
    let major = file_name
        .strip_prefix("libLLVM.so.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .with_context(|| format!("cannot read the LLVM version from {file_name}"))?;
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (links the eBPF programs; about 75 s on 2 cores)");
    let mut install = Command::new("cargo");
    install
        .env("LLVM_PREFIX", llvm_prefix())
        .args([
            "install",
            "--force",
            "--locked",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ]);
    checked(install)
}

/// A fresh build (debug tests plus the release eBPF object) took 2.2 GB here; leave headroom. A full disk does
/// not fail cleanly: the linker dies with SIGBUS on its mmap'd output. So say it up front.
const BUILD_NEEDS_BYTES: u64 = 4 << 30;
const REFUSE_BELOW_BYTES: u64 = 2 << 30;

fn enough_disk_for_build() -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    // The target directory may not exist yet on a fresh clone: its parent is the same filesystem.
    let probe = if target.exists() {
        target.clone()
    } else {
        PathBuf::from(".")
    };
    let Some(avail) =
        output("df", &["--output=avail", "-B1", &probe.to_string_lossy()]).and_then(|out| {
            out.lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<u64>().ok())
        })
    else {
        return Ok(()); // no df: nothing to say, the build itself will tell
    };
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if avail < REFUSE_BELOW_BYTES {
        bail!(
            "only {:.1} GiB free for {} (a build needs up to {:.0} GiB; with less the linker dies with SIGBUS): \
             free some space, e.g. `cargo clean` in old checkouts",
            gib(avail),
            target.display(),
            gib(BUILD_NEEDS_BYTES)
        );
    }
    if avail < BUILD_NEEDS_BYTES && !target.exists() {
        eprintln!(
            "setup: warning: {:.1} GiB free, a fresh build needs about {:.0} GiB",
            gib(avail),
            gib(BUILD_NEEDS_BYTES)
        );
    }
    Ok(())
}

fn mount_if_missing(fstype: &str, target: &str, why: &str) -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(target))
    {
        return Ok(());
    }
    if !is_root() {
        eprintln!("setup: {target} is not mounted ({why}); run as root to mount it");
        return Ok(());
    }
    eprintln!("setup: mounting {fstype} on {target} ({why})");
    let mut mount = Command::new("mount");
    mount.args(["-t", fstype, fstype, target]);
    checked(mount)
}
