//! A small loader for `BPF_PROG_TYPE_NETFILTER` programs (kernel >= 6.4), which aya 0.14
//! cannot load: aya-obj rejects a `netfilter` ELF section and has no such program type.
//!
//! Everything aya-specific is avoided on purpose so this module can be dropped once aya gains
//! the type. It does only what netprof's own netfilter programs need, one step per file:
//! `elf` parses a program and its legacy maps out of the ELF object and patches the map
//! references, `loader` creates the maps and loads the program, `program` attaches it (links
//! in `link`) and reads its maps, `program_array` holds the tail-call array the programs share,
//! and `sys` is the `bpf(2)` interface underneath (also used by netprof's other loaders).
//!
//! Not supported (rejected with [`NetfilterError::UnsupportedRelocation`]): bpf-to-bpf calls,
//! globals (`.rodata`/`.data`/`.bss`), BTF-defined maps (`.maps`) and CO-RE relocations.

mod elf;
mod link;
mod loader;
mod program;
mod program_array;
mod sys;

use std::io;

pub use elf::{
    parse, parse_section, patch_map_fds, MapDef, MapRelocation, ParsedProgram, LICENSE_SECTION,
    MAPS_SECTION, SECTION,
};
pub use link::{LinkInfo, NetfilterLink};
pub use loader::NetfilterLoader;
pub(crate) use loader::LOG_SIZE;
pub use program::NetfilterProgram;
pub use program_array::ProgramArray;
pub(crate) use sys::{
    is_permission, object_name, sys_bpf, sys_bpf_fd, zeroed, BPF_OBJ_GET_INFO_BY_FD, BPF_PROG_LOAD,
};
pub use sys::{
    InfoAttr, LinkCreateAttr, MapCreateAttr, MapElemAttr, ProgLoadAttr, ATTR_SIZE,
    BPF_LINK_TYPE_NETFILTER, BPF_NETFILTER, BPF_PROG_TYPE_NETFILTER, NFPROTO_IPV4,
};

use crate::netns::NetnsError;

/// The object built from `profiler-ebpf`'s `profiler-nf` bin target (netfilter programs only).
pub static NF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler-nf"));

/// How much of the verifier log an error message shows (the whole log is in the error).
const LOG_TAIL_LINES: usize = 20;

/// A netfilter hook (`enum nf_inet_hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Hook {
    PreRouting = 0,
    LocalIn = 1,
    Forward = 2,
    LocalOut = 3,
    PostRouting = 4,
}

impl Hook {
    /// The kernel's name for the hook, as `bpftool link` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Hook::PreRouting => "prerouting",
            Hook::LocalIn => "input",
            Hook::Forward => "forward",
            Hook::LocalOut => "output",
            Hook::PostRouting => "postrouting",
        }
    }
}

/// Errors parsing, loading, attaching or reading netfilter programs.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    /// The object is not a parsable ELF file.
    #[error("cannot parse the netfilter eBPF object: rebuild netprof")]
    Parse {
        #[source]
        source: object::Error,
    },

    /// No function of that name in the `netfilter` section.
    #[error("program {program} is not in the `netfilter` section of the object: rebuild netprof")]
    ProgramMissing { program: String },

    /// The object has no `license` section.
    #[error("the netfilter object has no `license` section: declare one in the eBPF crate")]
    LicenseMissing,

    /// A relocation this loader does not handle.
    #[error(
        "program {program} has an unsupported relocation at instruction {insn} ({what}): this \
         loader handles only legacy maps from the `maps` section; keep netfilter programs \
         free of globals, BTF maps and non-inlined calls"
    )]
    UnsupportedRelocation {
        program: String,
        insn: usize,
        what: String,
    },

    /// A map definition in the `maps` section is malformed.
    #[error("map {map} has a malformed definition ({size} bytes): rebuild netprof")]
    BadMapDefinition { map: String, size: u64 },

    /// The kernel refused an operation for lack of privileges.
    #[error("permission denied while {action}: run as root (needs CAP_BPF and CAP_NET_ADMIN)")]
    PermissionDenied {
        action: String,
        #[source]
        source: io::Error,
    },

    /// Creating a map failed.
    #[error("cannot create map {map}")]
    MapCreate {
        map: String,
        #[source]
        source: io::Error,
    },

    /// The kernel does not know netfilter programs at all.
    #[error(
        "the kernel rejected program {program} as BPF_PROG_TYPE_NETFILTER without a verifier \
         log: kernel < 6.4 has no netfilter programs and links (this is {kernel})"
    )]
    Unsupported {
        program: String,
        kernel: String,
        #[source]
        source: io::Error,
    },

    /// The verifier rejected the program.
    #[error("verifier rejected {program}: {}", log_tail(.log))]
    Verifier {
        program: String,
        /// The whole verifier log.
        log: String,
        #[source]
        source: io::Error,
    },

    /// A priority the kernel refuses.
    #[error(
        "priority {priority} is not allowed: priority must be between INT_MIN+1 and INT_MAX-1 \
         (the kernel reserves NF_IP_PRI_FIRST and NF_IP_PRI_LAST)"
    )]
    Priority { priority: i32 },

    /// Creating the netfilter link failed.
    #[error(
        "cannot attach {program} to the IPv4 {} hook at priority {priority}{}",
        .hook.name(),
        link_hint(.source)
    )]
    Attach {
        program: String,
        hook: Hook,
        priority: i32,
        #[source]
        source: io::Error,
    },

    /// Entering or leaving the target network namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),

    /// The program has no map of that name.
    #[error("program {program} uses no map named {map}")]
    MapMissing { program: String, map: String },

    /// Reading a map or an object's info failed.
    #[error("cannot read {what}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn link_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EINVAL) => {
            ": kernel < 6.4 has no netfilter links (or the hook/priority is invalid)"
        }
        Some(libc::EBUSY) => ": another program holds this hook and priority exclusively",
        _ => "",
    }
}

/// The last [`LOG_TAIL_LINES`] non-empty lines of a verifier log, joined with " | ".
pub(crate) fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "(empty verifier log)".to_owned();
    }
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join(" | ")
}

pub(crate) fn kernel_release() -> String {
    format!("Linux {}", crate::kernel_release())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let err = NetfilterError::Priority { priority: i32::MIN };
        assert!(err
            .to_string()
            .contains("priority must be between INT_MIN+1 and INT_MAX-1"));
        let err = NetfilterError::Verifier {
            program: "nf_count".into(),
            log: "0: R1=ctx\n\ninvalid mem access 'scalar'\n".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(
            err.to_string(),
            "verifier rejected nf_count: 0: R1=ctx | invalid mem access 'scalar'"
        );
        let err = NetfilterError::Attach {
            program: "nf_count".into(),
            hook: Hook::LocalOut,
            priority: -199,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert!(err
            .to_string()
            .contains("kernel < 6.4 has no netfilter links"));
        assert!(err.to_string().contains("output hook at priority -199"));
        assert_eq!(object_name("nf_count"), *b"nf_count\0\0\0\0\0\0\0\0");
        assert_eq!(object_name("a_very_long_program_name")[15], 0);
    }
}
