//! Getting a parsed netfilter program into the kernel: create (or borrow) its maps, patch
//! their fds in, `BPF_PROG_LOAD` it, and on failure load again to fetch the verifier's log.

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use super::{
    elf::{parse, patch_map_fds, MapDef, ParsedProgram, INSN_SIZE},
    kernel_release,
    program::NetfilterProgram,
    sys::{
        is_permission, object_info, object_name, sys_bpf_fd, zeroed, MapCreateAttr, ProgLoadAttr,
        BPF_MAP_CREATE, BPF_NETFILTER, BPF_PROG_LOAD, BPF_PROG_TYPE_NETFILTER,
    },
    NetfilterError,
};

/// Verifier log buffer for the retry after a failed load.
pub(crate) const LOG_SIZE: usize = 1 << 20;

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
    /// A loader for `object` ([`NF_OBJECT`](super::NF_OBJECT), or
    /// [`NF_TEST_OBJECT`](crate::ebpf::test_objects::NF_TEST_OBJECT) in tests).
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

pub(super) fn create_map(name: &str, def: &MapDef) -> Result<OwnedFd, NetfilterError> {
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
