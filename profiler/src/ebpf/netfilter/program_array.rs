//! The tail-call array netfilter programs share, made in user space so that it outlives any
//! one program's load.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::{
    elf::MapDef,
    loader::create_map,
    program::NetfilterProgram,
    sys::{sys_bpf, zeroed, MapElemAttr, BPF_MAP_TYPE_PROG_ARRAY, BPF_MAP_UPDATE_ELEM},
    NetfilterError,
};

/// A program array for tail calls between netfilter programs, made here so that every program
/// referring to it by `name` can share it (lend it with
/// [`NetfilterLoader::reuse_map`](super::NetfilterLoader::reuse_map)). The kernel empties a
/// program array when its last user-space fd closes: keep this alive while the programs are
/// attached.
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
