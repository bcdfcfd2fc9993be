//! Boots one kernel with the initramfs under qemu (software emulation: this machine has no
//! hardware virtualisation) and brings the guest's results back.
//!
//! The first serial port is the console (kept as `console.log`); the guest sends its results
//! on the second, as base64 of a gzipped tar between two marker lines, the first carrying its
//! sha256, so a cut-off transfer is detected rather than half-read.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::checked;

const BEGIN: &str = "NETPROF-RESULTS-BEGIN ";
const END: &str = "NETPROF-RESULTS-END";

/// What one boot needs.
#[derive(Debug)]
pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// Receives `console.log`, `results.b64` and the unpacked results.
    pub dir: &'a Path,
    /// The whole run, boot to power-off; qemu is killed after it.
    pub timeout: Duration,
    /// Appended to the kernel command line (facts for the guest runner).
    pub params: &'a str,
}

/// A finished boot: how long it took and where the results were unpacked.
#[derive(Debug)]
pub struct Booted {
    pub seconds: f64,
    pub results: PathBuf,
}

pub fn boot(boot: &Boot) -> Result<Booted> {
    let console = boot.dir.join("console.log");
    let channel = boot.dir.join("results.b64");
    let started = Instant::now();
    let status = Command::new("timeout")
        .args(["--kill-after=5", &format!("{}", boot.timeout.as_secs())])
        .arg("qemu-system-x86_64")
        // One host thread for both vCPUs: with a thread per vCPU, a vCPU can run a stale
        // translation of kernel text another vCPU just patched (static keys flip when bpf_stats
        // or TCX hooks come and go), and the guest dies of an int3 its handler no longer knows.
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "2G",
        ])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", channel.display()))
        .arg("-kernel")
        .arg(boot.vmlinuz)
        .arg("-initrd")
        .arg(boot.initramfs)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 loglevel=4 {}", boot.params))
        .stdin(Stdio::null())
        .status()
        .context("cannot run qemu-system-x86_64: run `cargo xtask setup`")?;
    let seconds = started.elapsed().as_secs_f64();
    if status.code() == Some(124) || status.code() == Some(137) {
        bail!(
            "the VM did not power off within {} s: see the end of {}",
            boot.timeout.as_secs(),
            console.display()
        );
    }
    if !status.success() {
        bail!("qemu failed ({status}): see {}", console.display());
    }
    let text = fs::read_to_string(&channel).unwrap_or_default();
    let (sha256, payload) = framed(&text).with_context(|| {
        format!(
            "the VM sent no complete results: see the end of {}",
            console.display()
        )
    })?;
    let archive = boot.dir.join("results.tgz");
    let decoded = decode_base64(&payload).context("the VM's results are not valid base64")?;
    fs::write(&archive, decoded)?;
    let sum = Command::new("sha256sum")
        .arg(&archive)
        .output()
        .context("cannot run sha256sum")?;
    let got = String::from_utf8_lossy(&sum.stdout);
    if got.split_whitespace().next() != Some(sha256.as_str()) {
        bail!(
            "the VM's results arrived damaged (sha256 differs): see {}",
            channel.display()
        );
    }
    let results = boot.dir.join("results");
    if results.exists() {
        fs::remove_dir_all(&results)?;
    }
    fs::create_dir_all(&results)?;
    let mut untar = Command::new("tar");
    untar.arg("xzf").arg(&archive).arg("-C").arg(&results);
    checked(untar)?;
    fs::remove_file(&channel)?;
    fs::remove_file(&archive)?;
    Ok(Booted { seconds, results })
}

/// The sha256 and base64 text between the markers, if both markers are there.
fn framed(text: &str) -> Option<(String, String)> {
    let start = text.find(BEGIN)? + BEGIN.len();
    let rest = &text[start..];
    let (sha256, rest) = rest.split_once('\n')?;
    let end = rest.find(END)?;
    let payload: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
    Some((sha256.trim().to_owned(), payload))
}

/// Standard base64 (with padding, whitespace already removed).
fn decode_base64(text: &str) -> Result<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        bail!("length {} is not a multiple of 4", bytes.len());
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for quad in bytes.chunks_exact(4) {
        let pad = quad.iter().rev().take_while(|c| **c == b'=').count();
        let mut word = 0u32;
        for (i, c) in quad.iter().enumerate() {
            let v = if i >= 4 - pad {
                0
            } else {
                value(*c).with_context(|| format!("bad character {:?}", *c as char))?
            };
            word = word << 6 | v;
        }
        let three = word.to_be_bytes();
        out.extend_from_slice(&three[1..4 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_what_busybox_writes() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aA==").unwrap(), b"h");
        assert!(decode_base64("aGk").is_err());
        assert!(decode_base64("a*k=").is_err());
    }

    #[test]
    fn framing_needs_both_markers() {
        let text = "noise\nNETPROF-RESULTS-BEGIN abc123\naGVs\r\nbG8=\nNETPROF-RESULTS-END\n";
        assert_eq!(
            framed(text),
            Some(("abc123".to_owned(), "aGVsbG8=".to_owned()))
        );
        assert_eq!(framed("NETPROF-RESULTS-BEGIN abc\naGVs\n"), None);
    }
}
