//! What this kernel lets the agent attach, found by trying rather than by version: each probe
//! loads a two-instruction program of the hook's type and attaches it, then closes everything.
//!
//! - tc: a TCX link, and a clsact qdisc with a direct-action `bpf` filter, both on the loopback
//!   device of a scratch network namespace made for the probe (so no device of the node is
//!   touched, and whatever is left goes with the namespace);
//! - netfilter: a netfilter link on LOCAL_IN, in the same scratch namespace;
//! - fentry: a program on the first netfilter function the fallback traces that this kernel
//!   has, in vmlinux's BTF or its module's (loaded against the module's BTF object, as the
//!   fallback loads its own), attached and detached at once (fentry is kernel-wide: its only
//!   trace is a moment's trampoline);
//! - kernel BTF (CO-RE and tp_btf need it) and bpffs (reported; nothing is pinned, so not needed).
//!
//! The agent is ready when it has at least one way for tc and one for netfilter (the agent
//! falls back from TCX to clsact and from netfilter links to fentry by itself); `/readyz` and
//! `netprof k8s doctor` show which ways there are and why the others are not.

mod sys;

use std::{fmt, os::fd::OwnedFd, path::Path};

use serde::{Deserialize, Serialize};

use self::sys::ProgSpec;

/// One thing the agent may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    Btf,
    Tcx,
    Clsact,
    NetfilterLinks,
    Fentry,
    Bpffs,
}

impl Feature {
    pub const ALL: [Feature; 6] = [
        Feature::Btf,
        Feature::Tcx,
        Feature::Clsact,
        Feature::NetfilterLinks,
        Feature::Fentry,
        Feature::Bpffs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Feature::Btf => "btf",
            Feature::Tcx => "tcx",
            Feature::Clsact => "clsact",
            Feature::NetfilterLinks => "netfilter-links",
            Feature::Fentry => "fentry",
            Feature::Bpffs => "bpffs",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub feature: Feature,
    pub available: bool,
    /// What was tried, and the kernel's answer when it refused.
    pub detail: String,
}

/// Every probe's answer on this kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFeatures {
    pub kernel: String,
    /// Why nothing could be probed (not root), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cannot_probe: Option<String>,
    pub probes: Vec<Probe>,
}

/// Netfilter functions the fentry fallback traces, in the order it prefers them.
const FENTRY_TARGETS: [&str; 3] = ["nf_conntrack_in", "ipt_do_table", "nft_do_chain"];
/// A netfilter priority no table uses; the probe's link lives only in its scratch namespace.
const PROBE_PRIORITY: i32 = -123;

/// The ways to attach tc and netfilter checkpoints: the features the agent chooses between.
const TC_WAYS: [Feature; 2] = [Feature::Tcx, Feature::Clsact];
const NETFILTER_WAYS: [Feature; 2] = [Feature::NetfilterLinks, Feature::Fentry];

impl KernelFeatures {
    /// Runs every probe. Blocks while the fentry one reads the kernel's BTF: call it once (at
    /// start) and keep the answer, or from a blocking thread.
    pub fn probe() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let btf = probe_btf();
        let bpffs = probe_bpffs();
        if let Err(err) = super::preflight() {
            if let super::EbpfError::NotRoot { .. } = err {
                return Self {
                    kernel,
                    cannot_probe: Some(err.to_string()),
                    probes: vec![btf, bpffs],
                };
            }
        }
        let mut probes = vec![btf];
        probes.extend(in_scratch_netns());
        probes.push(probe_fentry());
        probes.push(bpffs);
        Self {
            kernel,
            cannot_probe: None,
            probes,
        }
    }

    pub fn probe_of(&self, feature: Feature) -> Option<&Probe> {
        self.probes.iter().find(|p| p.feature == feature)
    }

    pub fn has(&self, feature: Feature) -> bool {
        self.probe_of(feature).is_some_and(|p| p.available)
    }

    /// The ways this kernel offers to attach tc checkpoints (TCX first, as the agent tries).
    pub fn tc_ways(&self) -> Vec<Feature> {
        TC_WAYS.into_iter().filter(|f| self.has(*f)).collect()
    }

    /// ... and netfilter checkpoints (links first).
    pub fn netfilter_ways(&self) -> Vec<Feature> {
        NETFILTER_WAYS
            .into_iter()
            .filter(|f| self.has(*f))
            .collect()
    }

    /// Why the agent cannot profile here (`None`: it can), each reason with what to do.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(reason) = &self.cannot_probe {
            return Some(reason.clone());
        }
        let mut missing = Vec::new();
        if !self.has(Feature::Btf) {
            missing.push(self.why(Feature::Btf));
        }
        if self.tc_ways().is_empty() {
            missing.push(format!(
                "no way to attach tc checkpoints (tcx: {}; clsact: {}): the agent needs TCX (Linux 6.6+) \
                 or the clsact qdisc with cls_bpf (CONFIG_NET_CLS_ACT, CONFIG_NET_CLS_BPF)",
                self.why(Feature::Tcx),
                self.why(Feature::Clsact)
            ));
        }
        if self.netfilter_ways().is_empty() {
            missing.push(format!(
                "no way to attach netfilter checkpoints (netfilter links: {}; fentry: {}): the agent needs \
                 netfilter BPF links (Linux 6.4+) or fentry (BPF trampolines, no kernel lockdown)",
                self.why(Feature::NetfilterLinks),
                self.why(Feature::Fentry)
            ));
        }
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    fn why(&self, feature: Feature) -> String {
        self.probe_of(feature)
            .map_or_else(|| "not probed".to_owned(), |p| p.detail.clone())
    }

    /// One line: `tc via tcx, clsact; netfilter via netfilter-links; kernel BTF`.
    pub fn summary(&self) -> String {
        let list = |ways: Vec<Feature>| {
            if ways.is_empty() {
                "none".to_owned()
            } else {
                ways.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
            }
        };
        let btf = if self.has(Feature::Btf) {
            "kernel BTF"
        } else {
            "no kernel BTF"
        };
        format!(
            "tc via {}; netfilter via {}; {btf}",
            list(self.tc_ways()),
            list(self.netfilter_ways())
        )
    }
}

fn found(feature: Feature, detail: impl Into<String>) -> Probe {
    Probe {
        feature,
        available: true,
        detail: detail.into(),
    }
}

fn missing(feature: Feature, detail: impl Into<String>) -> Probe {
    Probe {
        feature,
        available: false,
        detail: detail.into(),
    }
}

fn probe_btf() -> Probe {
    let path = Path::new(super::VMLINUX_BTF);
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > 0 => found(
            Feature::Btf,
            format!("{} ({} bytes)", path.display(), meta.len()),
        ),
        _ => missing(
            Feature::Btf,
            format!(
                "{} is missing: the kernel was built without CONFIG_DEBUG_INFO_BTF",
                path.display()
            ),
        ),
    }
}

fn probe_bpffs() -> Probe {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = c"/sys/fs/bpf";
    // SAFETY: statfs(2) with a NUL-terminated path and a zeroed out-parameter.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut fs) };
    if rc == 0 && fs.f_type as i64 == BPF_FS_MAGIC {
        found(
            Feature::Bpffs,
            "mounted on /sys/fs/bpf (netprof pins nothing)",
        )
    } else {
        missing(
            Feature::Bpffs,
            "not mounted on /sys/fs/bpf (not needed: netprof pins nothing)",
        )
    }
}

/// The tc and netfilter-link probes, on a thread that moves into a network namespace of its
/// own: whatever the probes attach there goes when the thread ends and the namespace with it.
fn in_scratch_netns() -> Vec<Probe> {
    let scratch = std::thread::spawn(|| {
        // SAFETY: unshare(2) moves only this thread (CLONE_NEWNET is per thread), which ends
        // right after the probes.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let err = std::io::Error::last_os_error();
            let reason = format!(
                "cannot make a scratch network namespace to probe in: {}",
                sys::describe(&err)
            );
            return vec![
                missing(Feature::Tcx, reason.clone()),
                missing(Feature::Clsact, reason.clone()),
                missing(Feature::NetfilterLinks, reason),
            ];
        }
        // A new namespace's only device.
        // SAFETY: a NUL-terminated name.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        vec![probe_tcx(lo), probe_clsact(lo), probe_netfilter_link()]
    });
    scratch.join().unwrap_or_else(|_| {
        let reason = "the probe thread panicked";
        vec![
            missing(Feature::Tcx, reason),
            missing(Feature::Clsact, reason),
            missing(Feature::NetfilterLinks, reason),
        ]
    })
}

fn load_classifier(verdict: i32) -> Result<OwnedFd, String> {
    sys::load(ProgSpec {
        prog_type: sys::BPF_PROG_TYPE_SCHED_CLS,
        verdict,
        ..ProgSpec::default()
    })
}

fn probe_tcx(lo: u32) -> Probe {
    // TCX_NEXT: let the next program (or the stack) decide.
    let prog = match load_classifier(-1) {
        Ok(prog) => prog,
        Err(reason) => return missing(Feature::Tcx, format!("a tc program: {reason}")),
    };
    match sys::link(&prog, lo, sys::BPF_TCX_INGRESS, [0; 4]) {
        Ok(link) => {
            drop(link);
            found(Feature::Tcx, "a TCX ingress link attached and closed")
        }
        Err(err) => missing(
            Feature::Tcx,
            format!(
                "the kernel refused a TCX link ({}; TCX came in Linux 6.6)",
                sys::describe(&err)
            ),
        ),
    }
}

fn probe_clsact(lo: u32) -> Probe {
    let prog = match load_classifier(0) {
        Ok(prog) => prog,
        Err(reason) => return missing(Feature::Clsact, format!("a tc program: {reason}")),
    };
    if let Err(err) = sys::add_clsact(lo) {
        return missing(
            Feature::Clsact,
            format!(
                "the kernel refused a clsact qdisc ({})",
                sys::describe(&err)
            ),
        );
    }
    match sys::add_bpf_filter(lo, &prog) {
        Ok(()) => found(
            Feature::Clsact,
            "a clsact qdisc with a direct-action bpf filter (removed with the scratch namespace)",
        ),
        Err(err) => missing(
            Feature::Clsact,
            format!(
                "the kernel refused a bpf filter on clsact ({})",
                sys::describe(&err)
            ),
        ),
    }
}

fn probe_netfilter_link() -> Probe {
    let prog = match sys::load(ProgSpec {
        prog_type: sys::BPF_PROG_TYPE_NETFILTER,
        expected_attach_type: sys::BPF_NETFILTER,
        // NF_ACCEPT.
        verdict: 1,
        ..ProgSpec::default()
    }) {
        Ok(prog) => prog,
        Err(reason) => {
            return missing(
                Feature::NetfilterLinks,
                format!("a netfilter program: {reason} (netfilter programs came in Linux 6.4)"),
            )
        }
    };
    let extra = [
        sys::NFPROTO_IPV4,
        sys::NF_INET_LOCAL_IN,
        PROBE_PRIORITY as u32,
        0,
    ];
    match sys::link(&prog, 0, sys::BPF_NETFILTER, extra) {
        Ok(link) => {
            drop(link);
            found(
                Feature::NetfilterLinks,
                "a netfilter link on LOCAL_IN attached and closed",
            )
        }
        Err(err) => missing(
            Feature::NetfilterLinks,
            format!(
                "the kernel refused a netfilter link ({})",
                sys::describe(&err)
            ),
        ),
    }
}

fn probe_fentry() -> Probe {
    let mut kernel = match crate::agent::btf::KernelBtf::from_sys_fs() {
        Ok(kernel) => kernel,
        Err(err) => {
            return missing(
                Feature::Fentry,
                format!("the kernel's BTF cannot be read: {err}"),
            )
        }
    };
    let mut reasons = Vec::new();
    let located = FENTRY_TARGETS
        .iter()
        .find_map(|name| match kernel.function(name) {
            Ok(located) => Some(located),
            Err(err) => {
                reasons.push(err.to_string());
                None
            }
        });
    let Some(located) = located else {
        return missing(Feature::Fentry, reasons.join("; "));
    };
    let target = match &located.module {
        Some(module) => format!("{} (module {module})", located.function),
        None => located.function.clone(),
    };
    let object = match located.module.as_deref().map(super::btf_objects::find) {
        None => None,
        Some(Ok(object)) => Some(object),
        Some(Err(err)) => return missing(Feature::Fentry, format!("fentry on {target}: {err}")),
    };
    let prog = match sys::load(ProgSpec {
        prog_type: sys::BPF_PROG_TYPE_TRACING,
        expected_attach_type: sys::BPF_TRACE_FENTRY,
        attach_btf_id: located.type_id,
        attach_btf_object: object.as_ref().map(|o| o.fd()),
        verdict: 0,
    }) {
        Ok(prog) => prog,
        Err(reason) => return missing(Feature::Fentry, format!("fentry on {target}: {reason}")),
    };
    match sys::attach_tracing(&prog) {
        Ok(link) => {
            drop(link);
            found(
                Feature::Fentry,
                format!("fentry on {target} attached and detached"),
            )
        }
        Err(err) => missing(
            Feature::Fentry,
            format!(
                "fentry on {target}: the kernel refused to attach it ({})",
                sys::describe(&err)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(available: &[Feature]) -> KernelFeatures {
        KernelFeatures {
            kernel: "6.1.0".into(),
            cannot_probe: None,
            probes: Feature::ALL
                .iter()
                .map(|f| Probe {
                    feature: *f,
                    available: available.contains(f),
                    detail: format!("{f} detail"),
                })
                .collect(),
        }
    }

    #[test]
    fn ready_needs_one_way_for_tc_and_one_for_netfilter() {
        let f = features(&[Feature::Btf, Feature::Clsact, Feature::Fentry]);
        assert_eq!(f.not_ready(), None);
        assert_eq!(
            f.summary(),
            "tc via clsact; netfilter via fentry; kernel BTF"
        );
        let f = features(&[Feature::Btf, Feature::Tcx, Feature::Clsact]);
        let why = f.not_ready().unwrap();
        assert!(
            why.starts_with("no way to attach netfilter checkpoints (netfilter links: netfilter-links detail; fentry: fentry detail)"),
            "{why}"
        );
        assert_eq!(
            f.summary(),
            "tc via tcx, clsact; netfilter via none; kernel BTF"
        );
        let f = features(&[Feature::NetfilterLinks, Feature::Tcx]);
        assert!(
            f.not_ready().unwrap().starts_with("btf detail"),
            "{:?}",
            f.not_ready()
        );
    }

    #[test]
    fn the_document_round_trips() {
        let f = features(&[Feature::Btf, Feature::Tcx]);
        let text = serde_json::to_string(&f).unwrap();
        assert!(text.contains("\"feature\":\"netfilter-links\""), "{text}");
        assert_eq!(serde_json::from_str::<KernelFeatures>(&text).unwrap(), f);
    }

    /// On the machine itself (root): every answer is a yes or a no with a reason, and the
    /// scratch namespace leaves nothing behind on the loopback of the root namespace.
    #[test]
    fn probes_this_kernel() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            crate::testing::print_skip("ebpf::features::tests::probes_this_kernel", "needs root");
            return;
        }
        let f = KernelFeatures::probe();
        println!("{}: {}", f.kernel, f.summary());
        for p in &f.probes {
            println!("  {}: {} ({})", p.feature, p.available, p.detail);
            assert!(!p.detail.is_empty());
        }
        assert_eq!(f.probes.len(), Feature::ALL.len());
        // The probe never reads the version; the test does, to check it against the kernels
        // that brought each hook in: a probe that wrongly says no fails here.
        let version: Vec<u32> = f
            .kernel
            .split(|c: char| !c.is_ascii_digit())
            .take(2)
            .filter_map(|n| n.parse().ok())
            .collect();
        if let [major, minor] = version[..] {
            let at_least = |a: u32, b: u32| (major, minor) >= (a, b);
            assert_eq!(
                f.has(Feature::Btf),
                std::path::Path::new(super::super::VMLINUX_BTF).exists()
            );
            if at_least(6, 6) {
                assert!(
                    f.has(Feature::Tcx),
                    "TCX is in {}: {:?}",
                    f.kernel,
                    f.probe_of(Feature::Tcx)
                );
            }
            if at_least(6, 4) {
                assert!(
                    f.has(Feature::NetfilterLinks),
                    "netfilter links are in {}: {:?}",
                    f.kernel,
                    f.probe_of(Feature::NetfilterLinks)
                );
            }
        }
    }
}
