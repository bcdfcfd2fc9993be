//! Reading a netfilter program out of an ELF object with the `object` crate: its instructions,
//! the legacy maps it references and the license, then pointing each map reference at a map
//! fd. Only what netprof's programs use is accepted; anything else is an error, not a guess.

use std::{collections::HashMap, ffi::CString, os::fd::RawFd};

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionIndex};

use super::NetfilterError;

/// The ELF section netfilter programs live in.
pub const SECTION: &str = profiler_common::netfilter::SECTION;
/// The section aya-ebpf 0.2's `#[map]` puts legacy map definitions in.
pub const MAPS_SECTION: &str = "maps";
/// The section holding the NUL-terminated license string.
pub const LICENSE_SECTION: &str = "license";

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
pub(super) const INSN_SIZE: usize = 8;

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

#[cfg(test)]
mod tests {
    use profiler_common::netfilter::{MAP_NAME, PROG_COUNT, SLOT_COUNT};

    use super::*;
    use crate::ebpf::{netfilter::NF_OBJECT, test_objects::NF_TEST_OBJECT, OBJECT};

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
        for object in [OBJECT, NF_OBJECT] {
            let err = parse(object, PROG_COUNT).unwrap_err();
            assert!(
                matches!(err, NetfilterError::ProgramMissing { .. }),
                "{err:?}"
            );
        }
        let err = parse(b"not an elf", PROG_COUNT).unwrap_err();
        assert!(matches!(err, NetfilterError::Parse { .. }), "{err:?}");
    }
}
