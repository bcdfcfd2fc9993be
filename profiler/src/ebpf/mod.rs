//! netprof's eBPF programs, loaded with aya. The kernel side lives in `profiler-ebpf`;
//! `build.rs` compiles it and the object is embedded here.
//!
//! One module per program family; each owns its `Ebpf` instance and its links, and detaches
//! everything when dropped.

pub mod btf_objects;
pub mod clsact;
pub mod features;
pub mod netfilter;
pub mod test_objects;
pub mod tracing;
pub mod uplink_counter;

use std::{error::Error as StdError, io, path::Path};

use aya::{Ebpf, EbpfLoader};
use profiler_common::datapath::{
    Config, GLOBAL_OFF_DEV_IFINDEX, GLOBAL_OFF_DEV_ND_NET, GLOBAL_OFF_NET_NS_INUM,
    GLOBAL_OFF_SKB_DEV,
};

pub use clsact::{ClsactFilters, QdiscOwner};
pub use uplink_counter::{AttachMode, Attachment, IcmpCounts, UplinkCounter};

use crate::netns::NetnsError;

/// The eBPF object built from `profiler-ebpf`: every kernel program of the agent aya loads (the
/// netfilter ones are in [`netfilter::NF_OBJECT`], the tests' own in [`test_objects`]). Public
/// so tests and tools can load it themselves.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

/// The globals of [`OBJECT`] and their values for `config`: the kernel struct offsets the
/// tp_btf programs load fields at, which the verifier must see as constants (the netfilter
/// object has no globals: its loader knows none).
pub(crate) fn object_globals(config: &Config) -> [(&'static str, u32); 4] {
    [
        (GLOBAL_OFF_SKB_DEV, config.skb_dev),
        (GLOBAL_OFF_DEV_IFINDEX, config.dev_ifindex),
        (GLOBAL_OFF_DEV_ND_NET, config.dev_nd_net),
        (GLOBAL_OFF_NET_NS_INUM, config.net_ns_inum),
    ]
}

/// Loads [`OBJECT`] with its read-only globals set from `config`.
pub fn load_object(config: &Config) -> Result<Ebpf, aya::EbpfError> {
    let globals = object_globals(config);
    let mut loader = EbpfLoader::new();
    for (name, value) in &globals {
        loader.override_global(name, value, true);
    }
    loader.load(OBJECT)
}

/// The kernel's own BTF; present when the kernel was built with `CONFIG_DEBUG_INFO_BTF=y`.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Errors loading, attaching, reading or detaching netprof's eBPF programs.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// Loading and attaching programs needs root.
    #[error("loading eBPF programs needs root (effective uid is {euid}): run as root")]
    NotRoot { euid: u32 },

    /// No kernel BTF: CO-RE and BTF-typed programs cannot load.
    #[error(
        "kernel lacks BTF ({path} is missing): netprof needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y"
    )]
    BtfMissing { path: &'static str },

    /// The kernel refused an operation for lack of privileges.
    #[error(
        "permission denied while {action}: run as root (netprof needs CAP_BPF, CAP_NET_ADMIN \
         and CAP_SYS_ADMIN; kernels before 5.11 also need a raised RLIMIT_MEMLOCK)"
    )]
    PermissionDenied {
        action: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },

    /// Entering or leaving the target network namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),

    /// The interface does not exist in the namespace it was looked up in.
    #[error(
        "interface {iface} not found in {}: list the interfaces with `{}`",
        netns_label(.netns.as_deref()),
        list_links_command(.netns.as_deref())
    )]
    InterfaceNotFound {
        iface: String,
        netns: Option<String>,
    },

    /// The embedded object could not be parsed or its maps could not be created.
    #[error("cannot load netprof's eBPF object")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },

    /// The embedded object lacks a program the loader expects: object and loader disagree.
    #[error("program {program} is missing from netprof's eBPF object: rebuild netprof")]
    ProgramMissing { program: &'static str },

    /// The kernel (usually the verifier) rejected a program.
    #[error("the kernel rejected program {program} (the verifier log follows in the cause)")]
    ProgramLoad {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// Attaching a program to an interface hook failed.
    #[error("cannot attach {program} to {iface} {direction} via {method}")]
    Attach {
        program: &'static str,
        iface: String,
        direction: &'static str,
        method: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// Adding the clsact qdisc needed by the netlink attach path failed.
    #[error("cannot add a clsact qdisc to {iface}")]
    AddClsact {
        iface: String,
        #[source]
        source: Box<aya::programs::tc::TcError>,
    },

    /// The embedded object lacks a map the loader expects.
    #[error("map {map} is missing from netprof's eBPF object: rebuild netprof")]
    MapMissing { map: &'static str },

    /// Reading a map failed.
    #[error("cannot read map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    /// Detaching a netlink-attached program failed.
    #[error("cannot detach {program} from interface index {ifindex}")]
    Detach {
        program: &'static str,
        ifindex: u32,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// Inspecting or removing the clsact qdisc netprof added failed.
    #[error(
        "cannot remove the clsact qdisc netprof added to interface index {ifindex}: remove it \
         with `tc qdisc del dev IFACE clsact`"
    )]
    RemoveClsact {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
}

fn netns_label(netns: Option<&str>) -> String {
    match netns {
        Some(name) => format!("netns {name}"),
        None => "the current network namespace".to_owned(),
    }
}

fn list_links_command(netns: Option<&str>) -> String {
    match netns {
        Some(name) => format!("ip -n {name} link"),
        None => "ip link".to_owned(),
    }
}

/// Checks what every netprof eBPF program needs before anything is loaded: root, and kernel
/// BTF. The error says what to do; tests use it to skip with that reason.
pub fn preflight() -> Result<(), EbpfError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(EbpfError::NotRoot { euid });
    }
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(EbpfError::BtfMissing { path: VMLINUX_BTF });
    }
    Ok(())
}

/// Whether `err` or any of its causes is an `EPERM`/`EACCES` from the kernel.
fn is_permission_error(err: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                return true;
            }
        }
        cause = err.source();
    }
    false
}

/// [`EbpfError::PermissionDenied`] if `err` is a permission error, else `otherwise(err)`.
fn denied_or<E>(
    action: impl Into<String>,
    err: E,
    otherwise: impl FnOnce(E) -> EbpfError,
) -> EbpfError
where
    E: StdError + Send + Sync + 'static,
{
    if is_permission_error(&err) {
        EbpfError::PermissionDenied {
            action: action.into(),
            source: Box::new(err),
        }
    } else {
        otherwise(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let err = EbpfError::InterfaceNotFound {
            iface: "eno1".into(),
            netns: Some("X".into()),
        };
        assert_eq!(
            err.to_string(),
            "interface eno1 not found in netns X: list the interfaces with `ip -n X link`"
        );
        let err = EbpfError::InterfaceNotFound {
            iface: "eno1".into(),
            netns: None,
        };
        assert!(err.to_string().contains("in the current network namespace"));
        assert!(EbpfError::NotRoot { euid: 1000 }
            .to_string()
            .contains("run as root"));
        assert!(EbpfError::BtfMissing { path: VMLINUX_BTF }
            .to_string()
            .contains("kernel lacks BTF (/sys/kernel/btf/vmlinux"));
    }

    #[test]
    fn permission_errors_are_found_in_the_cause_chain() {
        let eperm = aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: io::Error::from_raw_os_error(libc::EPERM),
        });
        let err = denied_or("attaching", eperm, |_| unreachable!());
        assert!(matches!(err, EbpfError::PermissionDenied { .. }), "{err:?}");

        let einval = aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: io::Error::from_raw_os_error(libc::EINVAL),
        });
        assert!(!is_permission_error(&einval));
    }
}
