//! The kernels of the matrix: Debian cloud kernels pinned by package and version, fetched with
//! `apt-get download`, unpacked once into the cache and kept there between runs.
//!
//! Debian removes old ABI packages from the mirror over time; a pin that is gone fails with
//! the version to update and the command that lists what exists.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::checked;

/// One pinned kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    /// Short name used on the command line and in result paths (`6.1`, `6.12`).
    pub id: &'static str,
    /// The Debian package (the unsigned image: same kernel, no secure-boot signature).
    pub package: &'static str,
    pub version: &'static str,
    /// `uname -r` of the kernel, the name of its modules directory.
    pub release: &'static str,
    /// An `apt-cache search --names-only` pattern listing this kernel's other ABI versions.
    pub search: &'static str,
}

/// Debian 12's kernel and its backported 6.12: the two kernels most clusters on Debian run,
/// one without TCX and netfilter links, one with both.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        id: "6.1",
        package: "linux-image-6.1.0-57-cloud-amd64-unsigned",
        version: "6.1.192-3",
        release: "6.1.0-57-cloud-amd64",
        search: r"^linux-image-6\.1\.0-.*-cloud-amd64-unsigned$",
    },
    Kernel {
        id: "6.12",
        package: "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
        version: "6.12.117-1~deb12u1",
        release: "6.12.117+deb12-cloud-amd64",
        search: r"^linux-image-6\.12\..*-cloud-amd64-unsigned$",
    },
];

/// Where fetched packages and unpacked kernels are kept (`NETPROF_VM_CACHE` overrides).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("NETPROF_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/netprof/kernels"))
}

/// The kernels `wanted` names (`all` or a comma-separated list of ids).
pub fn select(wanted: &str) -> Result<Vec<Kernel>> {
    if wanted == "all" {
        return Ok(KERNELS.to_vec());
    }
    wanted
        .split(',')
        .map(|id| {
            KERNELS
                .iter()
                .find(|k| k.id == id.trim())
                .copied()
                .with_context(|| {
                    let known: Vec<&str> = KERNELS.iter().map(|k| k.id).collect();
                    format!(
                        "no pinned kernel {id:?}: choose from {} or all",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

/// A kernel unpacked in the cache.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub kernel: Kernel,
    /// The `dpkg -x` tree (with `boot/` and `lib/modules/RELEASE/`).
    pub root: PathBuf,
}

impl Unpacked {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join(format!("boot/vmlinuz-{}", self.kernel.release))
    }

    pub fn modules(&self) -> PathBuf {
        self.root
            .join(format!("lib/modules/{}", self.kernel.release))
    }

    /// The configuration options that decide which of netprof's mechanisms the kernel has,
    /// from the package's `boot/config-*` (`y`, `m`, or `n` when unset): what the host-side
    /// test expects the kernel to allow or refuse.
    pub fn config_facts(&self) -> serde_json::Value {
        let path = self
            .root
            .join(format!("boot/config-{}", self.kernel.release));
        let text = fs::read_to_string(path).unwrap_or_default();
        let facts: serde_json::Map<String, serde_json::Value> = CONFIG_FACTS
            .iter()
            .map(|option| {
                let value = text
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{option}=")))
                    .unwrap_or("n");
                (option.to_string(), serde_json::Value::from(value))
            })
            .collect();
        facts.into()
    }
}

/// TCX, netfilter links, fentry/fexit (direct calls from ftrace), module BTF.
const CONFIG_FACTS: &[&str] = &[
    "CONFIG_NET_XGRESS",
    "CONFIG_NETFILTER_BPF_LINK",
    "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
    "CONFIG_DEBUG_INFO_BTF_MODULES",
];

impl Kernel {
    fn deb_name(&self) -> String {
        // apt-get download writes epoch colons as %3a; these versions have none.
        format!("{}_{}_amd64.deb", self.package, self.version)
    }

    /// Fetches (once) and unpacks (once) this kernel into the cache.
    pub fn ensure(&self) -> Result<Unpacked> {
        let cache = cache_dir();
        fs::create_dir_all(&cache)
            .with_context(|| format!("cannot create the kernel cache {}", cache.display()))?;
        let root = cache.join(format!("{}_{}", self.package, self.version));
        let unpacked = Unpacked {
            kernel: *self,
            root: root.clone(),
        };
        // The marker is written last, so an interrupted unpack is redone.
        let done = root.join(".netprof-unpacked");
        if done.exists() {
            return Ok(unpacked);
        }
        let deb = cache.join(self.deb_name());
        if !deb.exists() {
            self.download(&cache)?;
        }
        if root.exists() {
            fs::remove_dir_all(&root)
                .with_context(|| format!("cannot remove {}", root.display()))?;
        }
        let mut unpack = Command::new("dpkg-deb");
        unpack.arg("-x").arg(&deb).arg(&root);
        checked(unpack)?;
        decompress_modules(&unpacked.modules())?;
        if !unpacked.vmlinuz().is_file() {
            bail!(
                "{} has no {}: the pin in xtask/src/vm/kernels.rs names the wrong release",
                deb.display(),
                unpacked.vmlinuz().display()
            );
        }
        fs::write(&done, b"").with_context(|| format!("cannot write {}", done.display()))?;
        Ok(unpacked)
    }

    fn download(&self, cache: &Path) -> Result<()> {
        eprintln!(
            "vm: downloading {}={} (once; kept in {})",
            self.package,
            self.version,
            cache.display()
        );
        if self.apt_download(cache)? {
            return Ok(());
        }
        // Stale package lists are the usual cause: refresh once and try again.
        let mut update = Command::new("apt-get");
        update.args(["update", "-qq"]);
        checked(update)?;
        if self.apt_download(cache)? {
            return Ok(());
        }
        bail!(
            "kernel package {}={} cannot be downloaded: it has probably left the mirror. Pin a \
             version that exists in xtask/src/vm/kernels.rs (kernel {}); list them with \
             `apt-cache search --names-only '{}'` and `apt-cache policy PACKAGE`",
            self.package,
            self.version,
            self.id,
            self.search
        )
    }

    fn apt_download(&self, cache: &Path) -> Result<bool> {
        let status = Command::new("apt-get")
            .current_dir(cache)
            // apt drops to the _apt user for downloads, which cannot write a root-owned cache.
            .args(["-o", "APT::Sandbox::User=root", "download", "-qq"])
            .arg(format!("{}={}", self.package, self.version))
            .stdout(Stdio::null())
            .status()
            .context("cannot run apt-get: the VM matrix fetches Debian kernels with it")?;
        Ok(status.success() && cache.join(self.deb_name()).is_file())
    }
}

/// Newer Debian kernels ship `.ko.xz`; the guest's modprobe and depmod get plain `.ko` files,
/// so nothing in the initramfs depends on kmod's compression support.
fn decompress_modules(dir: &Path) -> Result<()> {
    let mut compressed = Vec::new();
    collect_files(dir, &mut |path| {
        if path.extension().is_some_and(|e| e == "xz") {
            compressed.push(path.to_path_buf());
        }
    })?;
    for chunk in compressed.chunks(256) {
        let mut xz = Command::new("xz");
        xz.args(["-d", "-q", "-T0"]).args(chunk);
        checked(xz)?;
    }
    Ok(())
}

/// Calls `each` on every regular file under `dir`, recursively.
pub fn collect_files(dir: &Path, each: &mut dyn FnMut(&Path)) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            collect_files(&path, each)?;
        } else if kind.is_file() {
            each(&path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_by_id() {
        assert_eq!(select("all").unwrap().len(), KERNELS.len());
        assert_eq!(select("6.12").unwrap()[0].id, "6.12");
        let err = select("5.15").unwrap_err().to_string();
        assert!(err.contains("choose from 6.1, 6.12 or all"), "{err}");
    }

    #[test]
    fn pins_are_consistent() {
        for k in KERNELS {
            assert!(k
                .package
                .contains(k.release.trim_end_matches("-cloud-amd64")));
            assert!(k.release.starts_with(k.id), "{k:?}");
        }
    }
}
