//! A small loader for `BPF_PROG_TYPE_NETFILTER` programs (kernel >= 6.4), which aya 0.14
//! cannot load: aya-obj rejects a `netfilter` ELF section and has no such program type.
//!
//! Everything aya-specific is avoided on purpose so this module can be dropped once aya gains
//! the type. It does only what netprof's own netfilter programs need:
//!
//! 1. parse the object (`profiler-nf`, embedded as [`NF_OBJECT`], or the tests' own) with the
//!    `object` crate and find a program by symbol name in the `netfilter` section;
//! 2. create the legacy maps (`maps` section, as aya-ebpf 0.2's `#[map]` emits them) the
//!    program references, or reuse maps the caller already has (e.g. from an aya `Ebpf`);
//! 3. patch each map reference (`ld_imm64` + `R_BPF_64_64`) to `BPF_PSEUDO_MAP_FD`;
//! 4. `BPF_PROG_LOAD` as `BPF_PROG_TYPE_NETFILTER`, returning the verifier log on failure;
//! 5. `BPF_LINK_CREATE` with `BPF_NETFILTER` in the calling thread's network namespace
//!    ([`NetfilterProgram::attach_in`] moves there first).
//!
//! Not supported (rejected with [`NetfilterError::UnsupportedRelocation`]): bpf-to-bpf calls,
//! globals (`.rodata`/`.data`/`.bss`), BTF-defined maps (`.maps`) and CO-RE relocations.
//!
//! The `bpf(2)` attribute structs below mirror `union bpf_attr` in
//! `include/uapi/linux/bpf.h`; each is zero-padded to [`ATTR_SIZE`] bytes, which the kernel
//! accepts as long as the bytes past the fields it knows are zero.

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionIndex};

use crate::netns::{self, NetnsError};

/// The object built from `profiler-ebpf`'s `profiler-nf` bin target (netfilter programs only).
pub static NF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler-nf"));

/// The ELF section netfilter programs live in.
pub const SECTION: &str = profiler_common::netfilter::SECTION;
/// The section aya-ebpf 0.2's `#[map]` puts legacy map definitions in.
pub const MAPS_SECTION: &str = "maps";
/// The section holding the NUL-terminated license string.
pub const LICENSE_SECTION: &str = "license";

// ---- uapi constants (include/uapi/linux/bpf.h, netfilter.h, netfilter_ipv4.h) ----

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
/// `BPF_MAP_TYPE_PROG_ARRAY` in `enum bpf_map_type`.
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
pub(crate) const BPF_PROG_LOAD: libc::c_long = 5;
pub(crate) const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `BPF_PROG_TYPE_NETFILTER` in `enum bpf_prog_type`.
pub const BPF_PROG_TYPE_NETFILTER: u32 = 32;
/// `BPF_NETFILTER` in `enum bpf_attach_type`.
pub const BPF_NETFILTER: u32 = 45;
/// `BPF_LINK_TYPE_NETFILTER` in `enum bpf_link_type`.
pub const BPF_LINK_TYPE_NETFILTER: u32 = 10;
/// `NFPROTO_IPV4`.
pub const NFPROTO_IPV4: u32 = 2;
/// `BPF_PSEUDO_MAP_FD`: `ld_imm64` src_reg meaning "imm is a map fd".
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// `BPF_PSEUDO_CALL`: `call` src_reg meaning "bpf-to-bpf call".
const BPF_PSEUDO_CALL: u8 = 1;
/// Opcode of `ld_imm64` (`BPF_LD | BPF_IMM | BPF_DW`).
const BPF_LD_IMM64: u8 = 0x18;
/// Opcode of `call` (`BPF_JMP | BPF_CALL`).
const BPF_CALL: u8 = 0x85;
/// `R_BPF_64_64`, the relocation LLVM emits for an `ld_imm64` of a symbol's address.
const R_BPF_64_64: u32 = 1;
/// Size of one BPF instruction.
const INSN_SIZE: usize = 8;

/// Bytes every attr struct is padded to (more than any command used here needs).
pub const ATTR_SIZE: usize = 128;
/// Verifier log buffer for the retry after a failed load.
pub(crate) const LOG_SIZE: usize = 1 << 20;
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

// ---- bpf(2) attribute structs ----

/// `union bpf_attr` for `BPF_MAP_CREATE` (first fields only).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MapCreateAttr {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub inner_map_fd: u32,
    pub numa_node: u32,
    pub map_name: [u8; 16],
    pub _pad: [u8; ATTR_SIZE - 44],
}

/// `union bpf_attr` for `BPF_MAP_*_ELEM`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MapElemAttr {
    pub map_fd: u32,
    pub _pad0: u32,
    pub key: u64,
    pub value: u64,
    pub flags: u64,
    pub _pad: [u8; ATTR_SIZE - 32],
}

/// `union bpf_attr` for `BPF_PROG_LOAD` (up to `expected_attach_type`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ProgLoadAttr {
    pub prog_type: u32,
    pub insn_cnt: u32,
    pub insns: u64,
    pub license: u64,
    pub log_level: u32,
    pub log_size: u32,
    pub log_buf: u64,
    pub kern_version: u32,
    pub prog_flags: u32,
    pub prog_name: [u8; 16],
    pub prog_ifindex: u32,
    pub expected_attach_type: u32,
    pub _pad: [u8; ATTR_SIZE - 72],
}

/// `union bpf_attr` for `BPF_LINK_CREATE` with the `netfilter` member.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LinkCreateAttr {
    pub prog_fd: u32,
    pub target_fd: u32,
    pub attach_type: u32,
    pub flags: u32,
    pub nf_pf: u32,
    pub nf_hooknum: u32,
    pub nf_priority: i32,
    pub nf_flags: u32,
    pub _pad: [u8; ATTR_SIZE - 32],
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct InfoAttr {
    pub bpf_fd: u32,
    pub info_len: u32,
    pub info: u64,
    pub _pad: [u8; ATTR_SIZE - 16],
}

const _: () = assert!(size_of::<MapCreateAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<MapElemAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<ProgLoadAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<LinkCreateAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<InfoAttr>() == ATTR_SIZE);

/// All-zero value of an attr struct (every field is an integer or a byte array).
pub(crate) fn zeroed<T: Copy>() -> T {
    // SAFETY: only used on the `#[repr(C)]` attr structs above, whose fields are all integers
    // or byte arrays, for which all-zero bytes are valid.
    unsafe { std::mem::zeroed() }
}

/// `bpf(cmd, attr, size_of(attr))`; returns the non-negative result.
pub(crate) fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live `#[repr(C)]` bpf_attr mirror of `size_of::<T>()` bytes; the
    // kernel reads at most that many and writes only into buffers the attr points at, which
    // the callers keep alive across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// [`sys_bpf`] for commands returning a new file descriptor.
pub(crate) fn sys_bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    // SAFETY: on success these commands return a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Copies `name` into a kernel object name (at most 15 bytes, NUL-terminated).
pub(crate) fn object_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (dst, src) in out.iter_mut().zip(
        name.bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
            .take(15),
    ) {
        *dst = src;
    }
    out
}

pub(crate) fn is_permission(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

// ---- ELF parsing ----

/// A legacy map definition (`struct bpf_map_def` as aya-ebpf 0.2 emits it in `maps`: seven
/// `u32`: type, key_size, value_size, max_entries, map_flags, id, pinning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapDef {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
}

/// One map reference inside a program: instruction `insn` (an `ld_imm64`) loads map `map`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRelocation {
    pub insn: usize,
    pub map: String,
}

/// A program parsed from the object, before loading.
#[derive(Debug, Clone)]
pub struct ParsedProgram {
    pub name: String,
    /// Raw instructions (8 bytes each), unpatched.
    pub insns: Vec<u8>,
    pub relocations: Vec<MapRelocation>,
    /// Definitions of the maps the relocations name.
    pub maps: HashMap<String, MapDef>,
    pub license: CString,
}

impl ParsedProgram {
    /// Number of instructions.
    pub fn insn_count(&self) -> usize {
        self.insns.len() / INSN_SIZE
    }
}

/// Finds `program` in the `netfilter` section of `elf` and collects its map references.
pub fn parse(elf: &[u8], program: &str) -> Result<ParsedProgram, NetfilterError> {
    parse_section(elf, SECTION, program)
}

/// [`parse`] for a program in another section (e.g. `fentry/FUNCTION` of the aya object).
pub fn parse_section(
    elf: &[u8],
    section: &str,
    program: &str,
) -> Result<ParsedProgram, NetfilterError> {
    let file = object::File::parse(elf).map_err(|source| NetfilterError::Parse { source })?;
    let unsupported = |insn: usize, what: String| NetfilterError::UnsupportedRelocation {
        program: program.to_owned(),
        insn,
        what,
    };

    let section = file
        .section_by_name(section)
        .ok_or_else(|| NetfilterError::ProgramMissing {
            program: program.to_owned(),
        })?;
    let symbol = file
        .symbols()
        .find(|s| {
            s.section_index() == Some(section.index())
                && s.kind() == object::SymbolKind::Text
                && s.name() == Ok(program)
        })
        .ok_or_else(|| NetfilterError::ProgramMissing {
            program: program.to_owned(),
        })?;
    let data = section
        .data()
        .map_err(|source| NetfilterError::Parse { source })?;
    let start = symbol.address() as usize;
    let end = start + symbol.size() as usize;
    if end > data.len()
        || !start.is_multiple_of(INSN_SIZE)
        || !(end - start).is_multiple_of(INSN_SIZE)
        || end == start
    {
        return Err(NetfilterError::ProgramMissing {
            program: program.to_owned(),
        });
    }
    let insns = data[start..end].to_vec();

    let maps_section = file.section_by_name(MAPS_SECTION);
    let maps_index: Option<SectionIndex> = maps_section.as_ref().map(|s| s.index());
    let mut relocations = Vec::new();
    let mut maps = HashMap::new();
    for (offset, relocation) in section.relocations() {
        let offset = offset as usize;
        if offset < start || offset >= end {
            continue;
        }
        let insn = (offset - start) / INSN_SIZE;
        let RelocationTarget::Symbol(index) = relocation.target() else {
            return Err(unsupported(insn, "relocation without a symbol".into()));
        };
        let target = file
            .symbol_by_index(index)
            .map_err(|source| NetfilterError::Parse { source })?;
        let name = target.name().unwrap_or("?").to_owned();
        let r_type = match relocation.flags() {
            object::RelocationFlags::Elf { r_type } => r_type,
            _ => 0,
        };
        let code = insns[insn * INSN_SIZE];
        if r_type != R_BPF_64_64 || code != BPF_LD_IMM64 {
            return Err(unsupported(
                insn,
                format!("relocation type {r_type} on opcode {code:#04x} against {name}"),
            ));
        }
        if target.section_index().is_none() || target.section_index() != maps_index {
            let in_section = target
                .section_index()
                .and_then(|i| file.section_by_index(i).ok())
                .and_then(|s| s.name().ok().map(str::to_owned))
                .unwrap_or_else(|| "no section".to_owned());
            return Err(unsupported(insn, format!("{name} in {in_section}")));
        }
        if !maps.contains_key(&name) {
            let maps_data = maps_section
                .as_ref()
                .map(|s| s.data())
                .transpose()
                .map_err(|source| NetfilterError::Parse { source })?
                .unwrap_or_default();
            let def = map_def(maps_data, target.address(), target.size()).ok_or_else(|| {
                NetfilterError::BadMapDefinition {
                    map: name.clone(),
                    size: target.size(),
                }
            })?;
            maps.insert(name.clone(), def);
        }
        relocations.push(MapRelocation { insn, map: name });
    }
    // bpf-to-bpf calls would need the callee's code appended; LLVM emits them without an ELF
    // relocation when caller and callee share a section, so look at the instructions too.
    for (insn, chunk) in insns.chunks_exact(INSN_SIZE).enumerate() {
        if chunk[0] == BPF_CALL && chunk[1] >> 4 == BPF_PSEUDO_CALL {
            return Err(unsupported(insn, "bpf-to-bpf call".into()));
        }
    }

    let license = file
        .section_by_name(LICENSE_SECTION)
        .and_then(|s| s.data().ok())
        .and_then(|d| {
            let text = d.split(|b| *b == 0).next().unwrap_or_default();
            (!text.is_empty())
                .then(|| CString::new(text).ok())
                .flatten()
        })
        .ok_or(NetfilterError::LicenseMissing)?;

    Ok(ParsedProgram {
        name: program.to_owned(),
        insns,
        relocations,
        maps,
        license,
    })
}

fn map_def(data: &[u8], address: u64, size: u64) -> Option<MapDef> {
    // type, key_size, value_size, max_entries, map_flags; aya-ebpf adds id and pinning.
    if size < 20 {
        return None;
    }
    let start = usize::try_from(address).ok()?;
    let bytes = data.get(start..start + 20)?;
    let field = |i: usize| u32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
    Some(MapDef {
        map_type: field(0),
        key_size: field(1),
        value_size: field(2),
        max_entries: field(3),
        map_flags: field(4),
    })
}

/// Returns `insns` with every relocated `ld_imm64` loading the fd of its map.
pub fn patch_map_fds(
    insns: &[u8],
    relocations: &[MapRelocation],
    fds: &HashMap<String, RawFd>,
) -> Vec<u8> {
    let mut out = insns.to_vec();
    for relocation in relocations {
        let fd = fds[&relocation.map];
        let at = relocation.insn * INSN_SIZE;
        out[at + 1] = (out[at + 1] & 0x0f) | (BPF_PSEUDO_MAP_FD << 4);
        out[at + 4..at + 8].copy_from_slice(&fd.to_ne_bytes());
        // The second half of ld_imm64 carries the upper 32 bits; for a map fd they are 0.
        out[at + INSN_SIZE + 4..at + INSN_SIZE + 8].copy_from_slice(&0i32.to_ne_bytes());
    }
    out
}

// ---- loading ----

/// Loads netfilter programs from an object.
///
/// Maps not lent with [`reuse_map`](Self::reuse_map) are created afresh for each program;
/// to share one between two programs, lend the first program's [`NetfilterProgram::map_fd`].
#[derive(Debug, Clone)]
pub struct NetfilterLoader<'a> {
    object: &'a [u8],
    reuse: HashMap<String, BorrowedFd<'a>>,
}

impl<'a> NetfilterLoader<'a> {
    /// A loader for `object` ([`NF_OBJECT`], or
    /// [`NF_TEST_OBJECT`](super::test_objects::NF_TEST_OBJECT) in tests).
    pub fn new(object: &'a [u8]) -> Self {
        Self {
            object,
            reuse: HashMap::new(),
        }
    }

    /// Use these existing maps (by symbol name) instead of creating new ones, e.g. to share a
    /// map with programs aya loaded, or between two netfilter programs.
    pub fn reuse_maps(mut self, maps: HashMap<String, BorrowedFd<'a>>) -> Self {
        self.reuse.extend(maps);
        self
    }

    /// Use an existing map `name` instead of creating it.
    pub fn reuse_map(mut self, name: &str, fd: BorrowedFd<'a>) -> Self {
        self.reuse.insert(name.to_owned(), fd);
        self
    }

    /// Parses `program`, creates (or reuses) its maps and loads it into the kernel.
    pub fn load(&self, program: &str) -> Result<NetfilterProgram, NetfilterError> {
        let parsed = parse(self.object, program)?;
        let mut maps = HashMap::new();
        for (name, def) in &parsed.maps {
            // A lent map is duplicated, so the program owns every map fd it holds and the
            // caller may close its own whenever it likes.
            let fd = match self.reuse.get(name) {
                Some(fd) => fd
                    .try_clone_to_owned()
                    .map_err(|source| NetfilterError::Read {
                        what: format!("the fd of the shared map {name}"),
                        source,
                    })?,
                None => create_map(name, def)?,
            };
            maps.insert(name.clone(), fd);
        }
        let raw: HashMap<String, RawFd> = maps
            .iter()
            .map(|(n, fd): (&String, &OwnedFd)| (n.clone(), fd.as_raw_fd()))
            .collect();
        let insns = patch_map_fds(&parsed.insns, &parsed.relocations, &raw);
        let fd = load_program(&parsed, &insns)?;
        let id = object_info(fd.as_fd(), "program")?.id;
        log::debug!("loaded netfilter program {program} (id {id})");
        Ok(NetfilterProgram {
            fd,
            id,
            name: parsed.name,
            maps,
            defs: parsed.maps,
        })
    }
}

fn create_map(name: &str, def: &MapDef) -> Result<OwnedFd, NetfilterError> {
    let mut attr: MapCreateAttr = zeroed();
    attr.map_type = def.map_type;
    attr.key_size = def.key_size;
    attr.value_size = def.value_size;
    attr.max_entries = def.max_entries;
    attr.map_flags = def.map_flags;
    attr.map_name = object_name(name);
    sys_bpf_fd(BPF_MAP_CREATE, &mut attr).map_err(|source| {
        if is_permission(&source) {
            NetfilterError::PermissionDenied {
                action: format!("creating map {name}"),
                source,
            }
        } else {
            NetfilterError::MapCreate {
                map: name.to_owned(),
                source,
            }
        }
    })
}

fn load_program(parsed: &ParsedProgram, insns: &[u8]) -> Result<OwnedFd, NetfilterError> {
    let mut attr: ProgLoadAttr = zeroed();
    attr.prog_type = BPF_PROG_TYPE_NETFILTER;
    attr.expected_attach_type = BPF_NETFILTER;
    attr.insn_cnt = (insns.len() / INSN_SIZE) as u32;
    attr.insns = insns.as_ptr() as u64;
    attr.license = parsed.license.as_ptr() as u64;
    attr.prog_name = object_name(&parsed.name);
    let first = match sys_bpf_fd(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => return Ok(fd),
        Err(err) => err,
    };
    // EPERM: no privileges. EACCES is also what the verifier answers when it refuses the
    // program: load again with a log to say which.
    if first.raw_os_error() == Some(libc::EPERM) {
        return Err(NetfilterError::PermissionDenied {
            action: format!("loading program {}", parsed.name),
            source: first,
        });
    }
    let mut log = vec![0u8; LOG_SIZE];
    attr.log_level = 1;
    attr.log_size = LOG_SIZE as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    let source = match sys_bpf_fd(BPF_PROG_LOAD, &mut attr) {
        // Loads with a log after failing without: not expected, but fine.
        Ok(fd) => return Ok(fd),
        Err(err) => err,
    };
    let len = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    let log = String::from_utf8_lossy(&log[..len]).into_owned();
    if log.trim().is_empty() && is_permission(&source) {
        return Err(NetfilterError::PermissionDenied {
            action: format!("loading program {}", parsed.name),
            source,
        });
    }
    if log.trim().is_empty() && source.raw_os_error() == Some(libc::EINVAL) {
        return Err(NetfilterError::Unsupported {
            program: parsed.name.clone(),
            kernel: kernel_release(),
            source,
        });
    }
    Err(NetfilterError::Verifier {
        program: parsed.name.clone(),
        log,
        source,
    })
}

/// The first fields of `struct bpf_prog_info` / `struct bpf_link_info`.
#[derive(Debug, Clone, Copy)]
struct ObjectInfo {
    /// `type` of a link (unused for programs: there it is the program type).
    kind: u32,
    id: u32,
    /// `prog_id` of a link.
    third: u32,
    /// For a netfilter link: the `netfilter` member of `bpf_link_info`'s union (offset 16):
    /// pf, hooknum, priority, flags.
    netfilter: [u32; 4],
}

/// What the kernel reports about a netfilter link (`BPF_OBJ_GET_INFO_BY_FD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_id: u32,
    pub program_id: u32,
    /// Protocol family (`NFPROTO_IPV4` = 2).
    pub pf: u32,
    /// Hook number (`enum nf_inet_hooks`, see [`Hook`]).
    pub hooknum: u32,
    pub priority: i32,
    pub flags: u32,
}

fn object_info(fd: BorrowedFd<'_>, what: &str) -> Result<ObjectInfo, NetfilterError> {
    /// The first 32 bytes of the info struct, 8-aligned like the kernel's.
    #[repr(C, align(8))]
    struct InfoBuf([u32; 8]);
    // Ask for the first 32 bytes only; the kernel fills up to info_len.
    let mut info = InfoBuf([0; 8]);
    let mut attr: InfoAttr = zeroed();
    attr.bpf_fd = fd.as_raw_fd() as u32;
    attr.info_len = size_of::<InfoBuf>() as u32;
    attr.info = info.0.as_mut_ptr() as u64;
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|source| NetfilterError::Read {
        what: format!("the {what}'s info"),
        source,
    })?;
    let word = |i: usize| info.0[i];
    Ok(ObjectInfo {
        kind: word(0),
        id: word(1),
        third: word(2),
        netfilter: [word(4), word(5), word(6), word(7)],
    })
}

/// A loaded netfilter program and the maps it uses. Dropping it closes the program fd (links
/// keep the program alive while they exist) and the maps the loader created.
#[derive(Debug)]
pub struct NetfilterProgram {
    fd: OwnedFd,
    id: u32,
    name: String,
    maps: HashMap<String, OwnedFd>,
    defs: HashMap<String, MapDef>,
}

impl NetfilterProgram {
    /// The program's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel's id for the program (`bpftool prog show id ID`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The program's fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The fd of map `name` (to share it with another loader), if the program uses it.
    pub fn map_fd(&self, name: &str) -> Option<BorrowedFd<'_>> {
        self.maps.get(name).map(AsFd::as_fd)
    }

    /// Attaches the program to `hook` for IPv4 at `priority` in the calling thread's network
    /// namespace.
    pub fn attach(&self, hook: Hook, priority: i32) -> Result<NetfilterLink, NetfilterError> {
        if priority == i32::MIN || priority == i32::MAX {
            return Err(NetfilterError::Priority { priority });
        }
        let mut attr: LinkCreateAttr = zeroed();
        attr.prog_fd = self.fd.as_raw_fd() as u32;
        attr.target_fd = 0;
        attr.attach_type = BPF_NETFILTER;
        attr.nf_pf = NFPROTO_IPV4;
        attr.nf_hooknum = hook as u32;
        attr.nf_priority = priority;
        attr.nf_flags = 0;
        let fd = sys_bpf_fd(BPF_LINK_CREATE, &mut attr).map_err(|source| {
            if is_permission(&source) {
                NetfilterError::PermissionDenied {
                    action: format!("attaching {} to {}", self.name, hook.name()),
                    source,
                }
            } else {
                NetfilterError::Attach {
                    program: self.name.clone(),
                    hook,
                    priority,
                    source,
                }
            }
        })?;
        let info = object_info(fd.as_fd(), "link")?;
        debug_assert_eq!(info.kind, BPF_LINK_TYPE_NETFILTER);
        Ok(NetfilterLink {
            fd,
            id: info.id,
            program_id: info.third,
            hook,
            priority,
        })
    }

    /// [`attach`](Self::attach) inside the `ip netns` namespace `netns` (`None`: the calling
    /// thread's). Briefly moves the calling thread there; on tokio call it from
    /// `spawn_blocking`.
    pub fn attach_in(
        &self,
        netns: Option<&str>,
        hook: Hook,
        priority: i32,
    ) -> Result<NetfilterLink, NetfilterError> {
        match netns {
            Some(name) => netns::run_in(name, || self.attach(hook, priority))?,
            None => self.attach(hook, priority),
        }
    }

    /// Value of slot `key` of the per-CPU `u64` map `map`, summed over all possible CPUs.
    pub fn read_percpu_u64(&self, map: &str, key: u32) -> Result<u64, NetfilterError> {
        let missing = || NetfilterError::MapMissing {
            program: self.name.clone(),
            map: map.to_owned(),
        };
        let fd = self.maps.get(map).ok_or_else(missing)?.as_raw_fd();
        let def = self.defs.get(map).ok_or_else(missing)?;
        if def.value_size != 8 || def.key_size != 4 {
            return Err(missing());
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| NetfilterError::Read {
            what: what.to_owned(),
            source,
        })?;
        // One 8-byte slot per possible CPU (the kernel rounds values up to 8 bytes).
        let mut values = vec![0u64; cpus];
        let mut attr: MapElemAttr = zeroed();
        attr.map_fd = fd as u32;
        attr.key = &key as *const u32 as u64;
        attr.value = values.as_mut_ptr() as u64;
        sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map_err(|source| NetfilterError::Read {
            what: format!("map {map} slot {key}"),
            source,
        })?;
        Ok(values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
    }
}

/// A program array for tail calls between netfilter programs, made here so that every program
/// referring to it by `name` can share it (lend it with [`NetfilterLoader::reuse_map`]). The
/// kernel empties a program array when its last user-space fd closes: keep this alive while
/// the programs are attached.
#[derive(Debug)]
pub struct ProgramArray {
    name: String,
    fd: OwnedFd,
}

impl ProgramArray {
    /// A program array of `entries` slots.
    pub fn create(name: &str, entries: u32) -> Result<Self, NetfilterError> {
        let def = MapDef {
            map_type: BPF_MAP_TYPE_PROG_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: entries,
            map_flags: 0,
        };
        Ok(Self {
            name: name.to_owned(),
            fd: create_map(name, &def)?,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Puts `program` into slot `index`.
    pub fn set(&self, index: u32, program: &NetfilterProgram) -> Result<(), NetfilterError> {
        let value = program.fd().as_raw_fd() as u32;
        let mut attr: MapElemAttr = zeroed();
        attr.map_fd = self.fd.as_raw_fd() as u32;
        attr.key = &index as *const u32 as u64;
        attr.value = &value as *const u32 as u64;
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map_err(|source| NetfilterError::MapCreate {
            map: format!(
                "{} (putting {} into slot {index})",
                self.name,
                program.name()
            ),
            source,
        })?;
        Ok(())
    }
}

/// A netfilter link. Dropping it (closing the fd) detaches the program.
#[derive(Debug)]
pub struct NetfilterLink {
    fd: OwnedFd,
    id: u32,
    program_id: u32,
    hook: Hook,
    priority: i32,
}

impl NetfilterLink {
    /// The kernel's id for the link (`bpftool link show id ID`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The id of the attached program.
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    pub fn hook(&self) -> Hook {
        self.hook
    }

    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// Asks the kernel what this link is attached to.
    pub fn query(&self) -> Result<LinkInfo, NetfilterError> {
        let info = object_info(self.fd.as_fd(), "link")?;
        Ok(LinkInfo {
            link_id: info.id,
            program_id: info.third,
            pf: info.netfilter[0],
            hooknum: info.netfilter[1],
            priority: info.netfilter[2] as i32,
            flags: info.netfilter[3],
        })
    }

    /// The link's fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Detaches the program (same as dropping the link).
    pub fn detach(self) {
        drop(self);
    }
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use profiler_common::netfilter::{MAP_NAME, PROG_COUNT, SLOT_COUNT};

    use super::*;
    use crate::ebpf::test_objects::NF_TEST_OBJECT;

    #[test]
    fn attr_layouts_match_the_uapi() {
        // union bpf_attr, BPF_PROG_LOAD member.
        assert_eq!(offset_of!(ProgLoadAttr, insn_cnt), 4);
        assert_eq!(offset_of!(ProgLoadAttr, insns), 8);
        assert_eq!(offset_of!(ProgLoadAttr, license), 16);
        assert_eq!(offset_of!(ProgLoadAttr, log_level), 24);
        assert_eq!(offset_of!(ProgLoadAttr, log_size), 28);
        assert_eq!(offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(offset_of!(ProgLoadAttr, kern_version), 40);
        assert_eq!(offset_of!(ProgLoadAttr, prog_flags), 44);
        assert_eq!(offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(offset_of!(ProgLoadAttr, prog_ifindex), 64);
        assert_eq!(offset_of!(ProgLoadAttr, expected_attach_type), 68);
        // BPF_LINK_CREATE: prog_fd, target_fd, attach_type, flags, then the netfilter struct.
        assert_eq!(offset_of!(LinkCreateAttr, target_fd), 4);
        assert_eq!(offset_of!(LinkCreateAttr, attach_type), 8);
        assert_eq!(offset_of!(LinkCreateAttr, flags), 12);
        assert_eq!(offset_of!(LinkCreateAttr, nf_pf), 16);
        assert_eq!(offset_of!(LinkCreateAttr, nf_hooknum), 20);
        assert_eq!(offset_of!(LinkCreateAttr, nf_priority), 24);
        assert_eq!(offset_of!(LinkCreateAttr, nf_flags), 28);
        // BPF_MAP_CREATE.
        assert_eq!(offset_of!(MapCreateAttr, map_flags), 16);
        assert_eq!(offset_of!(MapCreateAttr, map_name), 28);
        // BPF_MAP_LOOKUP_ELEM: map_fd, (pad), key, value, flags.
        assert_eq!(offset_of!(MapElemAttr, key), 8);
        assert_eq!(offset_of!(MapElemAttr, value), 16);
        assert_eq!(offset_of!(MapElemAttr, flags), 24);
        assert_eq!(offset_of!(InfoAttr, info), 8);
        for size in [
            size_of::<ProgLoadAttr>(),
            size_of::<LinkCreateAttr>(),
            size_of::<MapCreateAttr>(),
            size_of::<MapElemAttr>(),
            size_of::<InfoAttr>(),
        ] {
            assert_eq!(size, ATTR_SIZE);
        }
    }

    #[test]
    fn test_object_has_nf_count_with_its_map() {
        let parsed = parse(NF_TEST_OBJECT, PROG_COUNT).unwrap();
        assert_eq!(parsed.name, PROG_COUNT);
        assert!(parsed.insn_count() > 2, "{}", parsed.insn_count());
        assert_eq!(parsed.license.to_str().unwrap(), "GPL");
        assert!(!parsed.relocations.is_empty());
        for relocation in &parsed.relocations {
            assert_eq!(relocation.map, MAP_NAME);
            assert_eq!(parsed.insns[relocation.insn * INSN_SIZE], BPF_LD_IMM64);
        }
        assert_eq!(
            parsed.maps[MAP_NAME],
            MapDef {
                map_type: 6, // BPF_MAP_TYPE_PERCPU_ARRAY
                key_size: 4,
                value_size: 8,
                max_entries: SLOT_COUNT,
                map_flags: 0,
            }
        );
        // Last instruction is `exit`.
        assert_eq!(parsed.insns[parsed.insns.len() - INSN_SIZE], 0x95);
    }

    #[test]
    fn relocations_patch_ld_imm64_to_map_fds() {
        let parsed = parse(NF_TEST_OBJECT, PROG_COUNT).unwrap();
        let fds = HashMap::from([(MAP_NAME.to_owned(), 42)]);
        let patched = patch_map_fds(&parsed.insns, &parsed.relocations, &fds);
        assert_eq!(patched.len(), parsed.insns.len());
        for relocation in &parsed.relocations {
            let at = relocation.insn * INSN_SIZE;
            assert_eq!(patched[at], BPF_LD_IMM64);
            assert_eq!(patched[at + 1] >> 4, BPF_PSEUDO_MAP_FD);
            assert_eq!(
                patched[at + 1] & 0x0f,
                parsed.insns[at + 1] & 0x0f,
                "dst_reg kept"
            );
            assert_eq!(
                i32::from_ne_bytes(patched[at + 4..at + 8].try_into().unwrap()),
                42
            );
            assert_eq!(
                i32::from_ne_bytes(patched[at + 12..at + 16].try_into().unwrap()),
                0
            );
        }
        // Nothing else changes.
        let touched: Vec<usize> = parsed.relocations.iter().map(|r| r.insn).collect();
        for (i, (a, b)) in parsed
            .insns
            .chunks_exact(INSN_SIZE)
            .zip(patched.chunks_exact(INSN_SIZE))
            .enumerate()
        {
            if !touched.contains(&i) && !touched.iter().any(|t| t + 1 == i) {
                assert_eq!(a, b, "instruction {i} changed");
            }
        }
    }

    #[test]
    fn missing_program_and_bad_objects_are_errors() {
        let err = parse(NF_TEST_OBJECT, "no_such_prog").unwrap_err();
        assert!(
            matches!(err, NetfilterError::ProgramMissing { .. }),
            "{err:?}"
        );
        // The aya object has no netfilter section; the agent's netfilter object no counter.
        for object in [super::super::OBJECT, NF_OBJECT] {
            let err = parse(object, PROG_COUNT).unwrap_err();
            assert!(
                matches!(err, NetfilterError::ProgramMissing { .. }),
                "{err:?}"
            );
        }
        let err = parse(b"not an elf", PROG_COUNT).unwrap_err();
        assert!(matches!(err, NetfilterError::Parse { .. }), "{err:?}");
    }

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

    #[test]
    fn extreme_priorities_are_refused_before_the_kernel() {
        // No kernel involved: the check comes before BPF_LINK_CREATE. A program struct needs
        // an fd; /dev/null stands in.
        let program = NetfilterProgram {
            fd: std::fs::File::open("/dev/null").unwrap().into(),
            id: 0,
            name: "nf_count".into(),
            maps: HashMap::new(),
            defs: HashMap::new(),
        };
        for priority in [i32::MIN, i32::MAX] {
            let err = program.attach(Hook::LocalOut, priority).unwrap_err();
            assert!(matches!(err, NetfilterError::Priority { .. }), "{err:?}");
        }
    }
}
