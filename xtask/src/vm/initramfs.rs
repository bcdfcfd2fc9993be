//! The guest's root file system: two concatenated zstd cpio archives (the kernel unpacks each
//! in turn). The tools archive is built on every run from the fresh `netprof` binary, this
//! `xtask` binary (the in-guest runner), the lab's tools and their libraries; the modules
//! archive is built once per kernel and cached next to it.
//!
//! The layout is merged-/usr (`/bin`, `/sbin`, `/lib`, `/lib64` point into `/usr`), so a
//! library `ldd` names under `/lib` and its twin under `/usr/lib` land in one place. Busybox
//! provides the shell and small utilities from `/busybox`, last in PATH: its `ip` and `ping`
//! applets must never stand in for the real tools netprof runs.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::{checked, kernels::Unpacked};

/// The guest's `/init` (busybox sh).
const INIT: &str = include_str!("init.sh");

/// Host tools the guest needs, by name (found on PATH), each with the names it answers to in
/// the guest (multi-call binaries pick their behaviour from `argv[0]`).
const TOOLS: &[(&str, &[&str])] = &[
    ("ip", &[]),
    ("tc", &[]),
    ("bridge", &[]),
    ("sysctl", &[]),
    ("ping", &[]),
    ("bpftool", &[]),
    (
        "xtables-nft-multi",
        &[
            "iptables",
            "iptables-restore",
            "iptables-save",
            "iptables-nft",
            "iptables-nft-restore",
            "iptables-nft-save",
        ],
    ),
    ("kmod", &["modprobe", "lsmod", "insmod", "rmmod", "depmod"]),
];

/// iptables' extensions, loaded with dlopen (so `ldd` of the binary does not list them).
const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";
const BUSYBOX: &str = "/bin/busybox";

/// Module directories the guest may need (the lab's devices, netfilter, tc, and what they
/// depend on); everything else in the package (storage, GPUs, file systems) stays out.
const MODULE_DIRS: &[&str] = &[
    "kernel/net",
    "kernel/drivers/net/vxlan",
    "kernel/drivers/net/veth.ko",
    "kernel/drivers/net/dummy.ko",
    "kernel/drivers/net/ifb.ko",
    "kernel/drivers/net/tun.ko",
    "kernel/lib",
    "kernel/crypto",
    "kernel/arch",
];

/// Builds the tools archive for `netprof` and the running xtask binary into `path`.
pub fn tools_archive(netprof: &Path, work: &Path, path: &Path) -> Result<()> {
    let root = work.join("tools-root");
    fresh_dir(&root)?;
    for dir in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "etc",
        "var",
        "results",
        "busybox/bin",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("var/run", "../run"),
    ] {
        symlink(target, root.join(link))?;
    }
    let mut binaries = Vec::new();
    let xtask = std::env::current_exe().context("cannot find the running xtask binary")?;
    copy_file(&xtask, &root.join("usr/bin/xtask"), 0o755)?;
    binaries.push(xtask);
    copy_file(netprof, &root.join("usr/bin/netprof"), 0o755)?;
    binaries.push(netprof.to_path_buf());
    for (tool, aliases) in TOOLS {
        let found = which(tool).with_context(|| {
            format!("{tool} is not installed: run `cargo xtask setup` (the VM matrix copies it into the guest)")
        })?;
        copy_file(&found, &root.join("usr/sbin").join(tool), 0o755)?;
        for alias in *aliases {
            symlink(tool, root.join("usr/sbin").join(alias))?;
        }
        binaries.push(found);
    }
    let xtables = Path::new(XTABLES_DIR);
    for entry in fs::read_dir(xtables)
        .with_context(|| format!("cannot read {XTABLES_DIR}: iptables' extensions are missing"))?
    {
        let path = entry?.path();
        copy_file(&path, &guest_path(&root, &path), 0o644)?;
        binaries.push(path);
    }
    let mut libraries = BTreeSet::new();
    for binary in &binaries {
        libraries.extend(shared_libraries(binary)?);
    }
    for library in &libraries {
        copy_file(library, &guest_path(&root, library), 0o755)?;
    }
    busybox(&root)?;
    fs::write(root.join("init"), INIT)?;
    set_mode(&root.join("init"), 0o755)?;
    // The guest's /etc: enough for tools that look up names.
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    pack(&root, &["."], path)?;
    fs::remove_dir_all(&root).with_context(|| format!("cannot remove {}", root.display()))
}

/// The cached modules archive of `kernel` (built on first use).
pub fn modules_archive(kernel: &Unpacked) -> Result<PathBuf> {
    let path = kernel.root.join("netprof-modules.cpio.zst");
    if path.is_file() {
        return Ok(path);
    }
    let stage = kernel.root.join("netprof-modules-stage");
    fresh_dir(&stage)?;
    let release = kernel.kernel.release;
    let modules = stage.join("usr/lib/modules").join(release);
    fs::create_dir_all(&modules)?;
    for wanted in MODULE_DIRS {
        let from = kernel.modules().join(wanted);
        if !from.exists() {
            continue;
        }
        let mut copy = Command::new("cp");
        copy.arg("-r")
            .arg("--parents")
            .arg(wanted)
            .arg(&modules)
            .current_dir(kernel.modules());
        checked(copy)?;
    }
    for listing in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let from = kernel.modules().join(listing);
        if from.exists() {
            fs::copy(&from, modules.join(listing))?;
        }
    }
    symlink("usr/lib", stage.join("lib"))?;
    let mut depmod = Command::new("depmod");
    depmod.arg("-b").arg(&stage).arg(release);
    checked(depmod)?;
    fs::remove_file(stage.join("lib"))?;
    let partial = path.with_extension("partial");
    pack(&stage, &["usr"], &partial)?;
    fs::rename(&partial, &path)?;
    fs::remove_dir_all(&stage).with_context(|| format!("cannot remove {}", stage.display()))?;
    Ok(path)
}

/// `find TOP... | cpio -o -H newc | zstd` run in `root`, into `out`.
fn pack(root: &Path, tops: &[&str], out: &Path) -> Result<()> {
    let list = Command::new("find")
        .args(tops)
        .current_dir(root)
        .output()
        .context("cannot run find")?;
    if !list.status.success() {
        bail!("find in {} failed", root.display());
    }
    let archive =
        fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    let mut zstd = Command::new("zstd")
        .args(["-q", "-3", "-T0", "-c"])
        .stdin(Stdio::piped())
        .stdout(archive)
        .spawn()
        .context("cannot run zstd: run `cargo xtask setup`")?;
    let mut cpio = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "--owner=0:0"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(zstd.stdin.take().expect("piped"))
        .spawn()
        .context("cannot run cpio: run `cargo xtask setup`")?;
    {
        use std::io::Write;
        let mut input = cpio.stdin.take().expect("piped");
        input.write_all(&list.stdout)?;
    }
    let cpio_status = cpio.wait()?;
    let zstd_status = zstd.wait()?;
    if !cpio_status.success() || !zstd_status.success() {
        bail!(
            "packing {} failed (cpio {cpio_status}, zstd {zstd_status})",
            root.display()
        );
    }
    Ok(())
}

/// Busybox and a link per applet in `/busybox/bin`, for the shell and small utilities.
fn busybox(root: &Path) -> Result<()> {
    let dir = root.join("busybox/bin");
    copy_file(Path::new(BUSYBOX), &root.join("busybox/busybox"), 0o755)
        .context("busybox-static is not installed: run `cargo xtask setup` (the guest's shell)")?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .context("cannot run busybox --list")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        symlink("../busybox", dir.join(applet))?;
    }
    // The kernel runs /init with the interpreter named in its first line.
    symlink("../../busybox/busybox", root.join("usr/bin/sh"))?;
    Ok(())
}

/// The libraries `ldd` lists for `binary` (none for a static one).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(parse_ldd(&text))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Where host file `path` goes in the merged-/usr guest tree `root`.
fn guest_path(root: &Path, path: &Path) -> PathBuf {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let merged = ["bin", "sbin", "lib", "lib64"]
        .iter()
        .any(|top| relative.starts_with(top));
    if merged {
        root.join("usr").join(relative)
    } else {
        root.join(relative)
    }
}

/// Copies the file `from` points at (symlinks followed, so none dangles in the guest).
fn copy_file(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    set_mode(to, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\
                    \tnot a dynamic executable\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn merged_usr_paths() {
        let root = Path::new("/r");
        assert_eq!(
            guest_path(root, Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
            Path::new("/r/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(
            guest_path(
                root,
                Path::new("/usr/lib/x86_64-linux-gnu/xtables/libxt_mark.so")
            ),
            Path::new("/r/usr/lib/x86_64-linux-gnu/xtables/libxt_mark.so")
        );
        assert_eq!(
            guest_path(root, Path::new("/libfoo/x")),
            Path::new("/r/libfoo/x"),
            "prefix match is by path component only"
        );
    }
}
