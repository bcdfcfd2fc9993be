//! A small reader of the kernel's raw BTF (`/sys/kernel/btf/vmlinux`), enough to find struct
//! member offsets the kernel programs need (`Config`): a struct by name, then a member by a
//! dotted path, descending into anonymous struct/union members on the way (`sk_buff.dev` and
//! `sk_buff.network_header` sit inside anonymous unions and `struct_group`s).
//!
//! Format (the kernel's Documentation/bpf/btf.rst): a header (magic 0xeB9F, version, flags,
//! hdr_len, then type and string section offsets/lengths relative to the header's end), a type
//! section of variable-length records (`struct btf_type`: name_off, info, size/type, then
//! kind-specific data), and a string section of NUL-terminated names. Type ids start at 1.
//!
//! A module's BTF (`/sys/kernel/btf/<module>`) is *split* BTF on top of vmlinux's: its type
//! ids continue after vmlinux's last one and its string offsets after vmlinux's string
//! section, and its types refer to vmlinux's freely (`struct sk_buff`, parameter names). It is
//! parsed with vmlinux's as its base ([`Btf::parse_split`]) and then answers for both.

mod kernel;
mod offsets;

use std::{collections::HashMap, path::Path, sync::Arc};

pub use kernel::{FunctionBtf, KernelBtf, LocateError};
pub use offsets::fill_fentry_config;

/// BTF magic as it reads in the file's byte order (little-endian here).
const BTF_MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Errors reading BTF or finding a member in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read kernel BTF {path}: netprof needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (and read access, i.e. root)"
    )]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{what} is not valid BTF: {reason} (is it a raw BTF file such as /sys/kernel/btf/vmlinux?)"
    )]
    Malformed { what: String, reason: String },
    #[error("struct {name} is not in the kernel's BTF: this kernel is not supported, report it")]
    NoStruct { name: String },
    #[error(
        "struct {name} has no member {path} in the kernel's BTF: this kernel's layout is not \
         supported, report it with `bpftool btf dump file /sys/kernel/btf/vmlinux`"
    )]
    NoMember { name: String, path: String },
    #[error("{name}.{path} is a bitfield: netprof reads whole bytes only")]
    Bitfield { name: String, path: String },
}

/// One member of a struct or union.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits from the start of the containing struct.
    bit_offset: u32,
    bitfield_size: u32,
}

/// The parts of a type this reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Type {
    kind: u32,
    name_off: u32,
    /// size (struct/union/int/enum) or referenced type (ptr/typedef/modifiers).
    size_or_type: u32,
    members: Vec<Member>,
}

/// A parsed BTF blob.
#[derive(Debug)]
pub struct Btf {
    /// `types[id - 1]`.
    types: Vec<Type>,
    strings: Vec<u8>,
    /// First struct (with members) of each name.
    structs: HashMap<String, u32>,
    /// First function of each name.
    funcs: HashMap<String, u32>,
    /// The BTF this one is split from (vmlinux's, for a module's).
    base: Option<Arc<Btf>>,
    /// Id of `types[0]`: 1, or the id after the base's last type.
    first_id: u32,
    /// Offset of `strings[0]`: 0, or the end of the base's string section.
    first_string: u32,
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(crate::ebpf::VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data, &path.display().to_string())
    }

    /// Parses a raw BTF blob; `what` names it in errors.
    pub fn parse(data: &[u8], what: &str) -> Result<Self, BtfError> {
        Self::parse_with(data, what, None)
    }

    /// Parses a module's split BTF on top of `base` (vmlinux's).
    pub fn parse_split(data: &[u8], what: &str, base: Arc<Btf>) -> Result<Self, BtfError> {
        Self::parse_with(data, what, Some(base))
    }

    fn parse_with(data: &[u8], what: &str, base: Option<Arc<Btf>>) -> Result<Self, BtfError> {
        let bad = |reason: String| BtfError::Malformed {
            what: what.to_owned(),
            reason,
        };
        if data.len() < HEADER_MIN {
            return Err(bad(format!(
                "{} bytes is shorter than a header",
                data.len()
            )));
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic != BTF_MAGIC {
            return Err(bad(format!(
                "magic {magic:#06x}, expected {BTF_MAGIC:#06x}"
            )));
        }
        let word = |at: usize| -> Option<u32> {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        };
        let hdr_len = word(4).unwrap() as usize;
        let (type_off, type_len) = (word(8).unwrap() as usize, word(12).unwrap() as usize);
        let (str_off, str_len) = (word(16).unwrap() as usize, word(20).unwrap() as usize);
        let section = |off: usize, len: usize, name: &str| -> Result<&[u8], BtfError> {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some(start..start.checked_add(len)?))
                .and_then(|range| data.get(range))
                .ok_or_else(|| bad(format!("{name} section {off}+{len} is out of bounds")))
        };
        let type_data = section(type_off, type_len, "type")?;
        let strings = section(str_off, str_len, "string")?.to_vec();

        let mut types = Vec::new();
        let mut at = 0usize;
        let tword = |at: usize| -> Result<u32, BtfError> {
            type_data
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or_else(|| bad(format!("type section truncated at byte {at}")))
        };
        while at < type_data.len() {
            let name_off = tword(at)?;
            let info = tword(at + 4)?;
            let size_or_type = tword(at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = tword(m + 8)?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (offset & 0xff_ffff, offset >> 24)
                        } else {
                            (offset, 0)
                        };
                        members.push(Member {
                            name_off: tword(m)?,
                            type_id: tword(m + 4)?,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    vlen * 12
                }
                KIND_FUNC_PROTO => {
                    // Parameters, kept as members: name, type, position (in `bit_offset`).
                    for i in 0..vlen {
                        let m = at + i * 8;
                        members.push(Member {
                            name_off: tword(m)?,
                            type_id: tword(m + 4)?,
                            bit_offset: i as u32,
                            bitfield_size: 0,
                        });
                    }
                    vlen * 8
                }
                KIND_ENUM => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                other => {
                    return Err(bad(format!(
                        "unknown kind {other} at type id {}",
                        types.len() + 1
                    )))
                }
            };
            at += extra;
            types.push(Type {
                kind,
                name_off,
                size_or_type,
                members,
            });
        }
        if at != type_data.len() {
            return Err(bad("type section does not end on a record".into()));
        }
        let mut btf = Self {
            types,
            strings,
            structs: HashMap::new(),
            funcs: HashMap::new(),
            first_id: base.as_ref().map_or(1, |b| b.end_id()),
            first_string: base.as_ref().map_or(0, |b| b.end_string()),
            base,
        };
        for (i, ty) in btf.types.iter().enumerate() {
            let id = btf.first_id + i as u32;
            if ty.kind == KIND_STRUCT && ty.name_off != 0 && !ty.members.is_empty() {
                let name = btf.name(ty.name_off).to_owned();
                btf.structs.entry(name).or_insert(id);
            }
            if ty.kind == KIND_FUNC && ty.name_off != 0 {
                let name = btf.name(ty.name_off).to_owned();
                btf.funcs.entry(name).or_insert(id);
            }
        }
        Ok(btf)
    }

    /// The id after this BTF's last type (a split BTF's first).
    fn end_id(&self) -> u32 {
        self.first_id + self.types.len() as u32
    }

    /// The offset after this BTF's string section (a split BTF's first).
    fn end_string(&self) -> u32 {
        self.first_string + self.strings.len() as u32
    }

    fn name(&self, off: u32) -> &str {
        if off < self.first_string {
            return self.base.as_ref().map_or("", |base| base.name(off));
        }
        let start = (off - self.first_string) as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Option<&Type> {
        if id < self.first_id {
            return self.base.as_ref().and_then(|base| base.get(id));
        }
        self.types.get((id - self.first_id) as usize)
    }

    /// The id of the first struct (with members) named `name`, here or in the base.
    fn struct_id(&self, name: &str) -> Option<u32> {
        self.structs
            .get(name)
            .copied()
            .or_else(|| self.base.as_ref()?.struct_id(name))
    }

    /// The type id of kernel function `name` (`BTF_KIND_FUNC`), here or in the base: what
    /// fentry/fexit programs are loaded against.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.funcs
            .get(name)
            .copied()
            .or_else(|| self.base.as_ref()?.func_id(name))
    }

    /// Whether function `name` is defined in this BTF itself (not only in its base).
    pub fn defines_func(&self, name: &str) -> bool {
        self.funcs.contains_key(name)
    }

    /// Follows typedefs and modifiers (const, volatile, restrict, type tags).
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.get(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Byte offset of the member at `path` (dot-separated, e.g. `nd_net.net`) in struct `name`.
    /// Anonymous struct/union members are searched through at every level.
    pub fn member_offset(&self, name: &str, path: &str) -> Result<u32, BtfError> {
        let id = self.struct_id(name).ok_or_else(|| BtfError::NoStruct {
            name: name.to_owned(),
        })?;
        let no_member = || BtfError::NoMember {
            name: name.to_owned(),
            path: path.to_owned(),
        };
        let mut ty = self.get(id).ok_or_else(no_member)?;
        let mut bits = 0u32;
        let mut segments = path.split('.').peekable();
        while let Some(segment) = segments.next() {
            let (offset, member) = self.find_member(ty, segment, 0).ok_or_else(no_member)?;
            if member.bitfield_size != 0 {
                return Err(BtfError::Bitfield {
                    name: name.to_owned(),
                    path: path.to_owned(),
                });
            }
            bits += offset;
            if segments.peek().is_some() {
                ty = self
                    .resolve(member.type_id)
                    .filter(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
                    .ok_or_else(no_member)?;
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield {
                name: name.to_owned(),
                path: path.to_owned(),
            });
        }
        Ok(bits / 8)
    }

    /// Depth-first search for a member named `wanted` in `ty`, through anonymous members.
    /// Returns its bit offset from the start of `ty`.
    fn find_member(&self, ty: &Type, wanted: &str, depth: u32) -> Option<(u32, Member)> {
        if depth > 16 {
            return None;
        }
        for member in &ty.members {
            if member.name_off != 0 {
                if self.name(member.name_off) == wanted {
                    return Some((member.bit_offset, *member));
                }
                continue;
            }
            let Some(inner) = self
                .resolve(member.type_id)
                .filter(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
            else {
                continue;
            };
            if let Some((offset, found)) = self.find_member(inner, wanted, depth + 1) {
                return Some((member.bit_offset + offset, found));
            }
        }
        None
    }

    /// The parameter names of kernel function `name`, in order; `None` if it is not in BTF.
    pub fn params(&self, name: &str) -> Option<Vec<&str>> {
        let func = self.get(self.func_id(name)?)?;
        let proto = self
            .get(func.size_or_type)
            .filter(|t| t.kind == KIND_FUNC_PROTO)?;
        Some(
            proto
                .members
                .iter()
                .map(|m| self.name(m.name_off))
                .collect(),
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a raw BTF blob from type records and strings; with [`Builder::split`], a
    /// module's split BTF whose names reuse the base's strings as libbpf's dedup does.
    pub(crate) struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        /// For split BTF: the base's string section (its names are reused, not repeated).
        base_strings: Vec<u8>,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                base_strings: Vec::new(),
            }
        }
        /// A split BTF on top of `base` (a [`Builder`]'s blob): ids continue after the
        /// base's, string offsets after its strings.
        pub(crate) fn split(base: &Builder) -> Self {
            Self {
                types: Vec::new(),
                strings: Vec::new(),
                base_strings: base.strings.clone(),
            }
        }
        pub(crate) fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let needle: Vec<u8> = [&[0], s.as_bytes(), &[0]].concat();
            if let Some(at) = self
                .base_strings
                .windows(needle.len())
                .position(|w| w == needle.as_slice())
            {
                return at as u32 + 1;
            }
            let off = (self.base_strings.len() + self.strings.len()) as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn push(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }
        pub(crate) fn int(&mut self, name: &str, size: u32) {
            let n = self.string(name);
            self.push(&[n, KIND_INT << 24, size, size * 8]);
        }
        pub(crate) fn ptr(&mut self, to: u32) {
            self.push(&[0, KIND_PTR << 24, to]);
        }
        pub(crate) fn typedef(&mut self, name: &str, to: u32) {
            let n = self.string(name);
            self.push(&[n, KIND_TYPEDEF << 24, to]);
        }
        /// members: (name, type, bit offset)
        pub(crate) fn aggregate(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) {
            let n = self.string(name);
            self.push(&[n, kind << 24 | members.len() as u32, size]);
            for (name, ty, off) in members {
                let n = self.string(name);
                self.push(&[n, *ty, *off]);
            }
        }
        /// A function `name` with parameters `params` (name, type): FUNC_PROTO then FUNC.
        /// Returns nothing; the caller counts ids (the proto is the next id, the FUNC the one
        /// after).
        pub(crate) fn function(&mut self, name: &str, proto_id: u32, params: &[(&str, u32)]) {
            self.push(&[0, KIND_FUNC_PROTO << 24 | params.len() as u32, 1]);
            for (param, ty) in params {
                let n = self.string(param);
                self.push(&[n, *ty]);
            }
            let n = self.string(name);
            self.push(&[n, KIND_FUNC << 24, proto_id]);
        }
        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A miniature sk_buff: `dev` inside an anonymous union inside an anonymous struct inside
    /// an anonymous union; `network_header` inside a struct_group-like anonymous union.
    fn tiny() -> Vec<u8> {
        let mut b = Builder::new();
        b.int("unsigned int", 4); // 1
        b.int("u16", 2); // 2
        b.aggregate(
            KIND_STRUCT,
            "net_device",
            16,
            &[("name", 1, 0), ("ifindex", 1, 64)],
        ); // 3
        b.ptr(3); // 4
        b.aggregate(KIND_UNION, "", 8, &[("dev", 4, 0), ("dev_scratch", 1, 0)]); // 5
        b.aggregate(
            KIND_STRUCT,
            "",
            24,
            &[("next", 4, 0), ("prev", 4, 64), ("", 5, 128)],
        ); // 6
        b.aggregate(KIND_UNION, "", 24, &[("", 6, 0), ("rbnode", 1, 0)]); // 7
        b.aggregate(
            KIND_STRUCT,
            "",
            4,
            &[("transport_header", 2, 0), ("network_header", 2, 16)],
        ); // 8
        b.typedef("grp_t", 8); // 9
        b.aggregate(KIND_UNION, "", 4, &[("", 9, 0), ("headers", 8, 0)]); // 10
        b.aggregate(
            KIND_STRUCT,
            "sk_buff",
            64,
            &[("", 7, 0), ("len", 1, 192), ("", 10, 256), ("head", 4, 320)],
        ); // 11
        b.aggregate(KIND_STRUCT, "possible_net_t", 8, &[("net", 4, 0)]); // 12
        b.aggregate(
            KIND_STRUCT,
            "holder",
            16,
            &[("x", 1, 0), ("nd_net", 12, 64)],
        ); // 13
        b.build()
    }

    #[test]
    fn descends_into_anonymous_members() {
        let btf = Btf::parse(&tiny(), "tiny").unwrap();
        assert_eq!(btf.member_offset("sk_buff", "dev").unwrap(), 16);
        assert_eq!(btf.member_offset("sk_buff", "network_header").unwrap(), 34);
        assert_eq!(btf.member_offset("sk_buff", "head").unwrap(), 40);
        assert_eq!(
            btf.member_offset("sk_buff", "headers.network_header")
                .unwrap(),
            34
        );
        assert_eq!(btf.member_offset("holder", "nd_net.net").unwrap(), 8);
        assert_eq!(btf.member_offset("net_device", "ifindex").unwrap(), 8);
    }

    #[test]
    fn missing_names_say_what_is_missing() {
        let btf = Btf::parse(&tiny(), "tiny").unwrap();
        let err = btf.member_offset("sk_buff", "nope").unwrap_err();
        assert!(matches!(err, BtfError::NoMember { .. }), "{err}");
        assert!(err.to_string().contains("sk_buff has no member nope"));
        let err = btf.member_offset("task_struct", "pid").unwrap_err();
        assert!(matches!(err, BtfError::NoStruct { .. }));
        // `dev` is a pointer, not a struct: no descent through it.
        assert!(btf.member_offset("sk_buff", "dev.ifindex").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"short", "x").is_err());
        let mut blob = tiny();
        blob[0] = 0;
        assert!(matches!(
            Btf::parse(&blob, "x"),
            Err(BtfError::Malformed { .. })
        ));
        let mut blob = tiny();
        let len = blob.len() as u32 + 1;
        blob[20..24].copy_from_slice(&len.to_le_bytes());
        assert!(Btf::parse(&blob, "x").is_err());
    }

    /// A base with `sk_buff` and the names `skb`/`state`, and a module on top whose function
    /// takes a base type and reuses base names, and whose own struct holds a base struct.
    fn base_and_module() -> (Vec<u8>, Vec<u8>) {
        let mut base = Builder::new();
        base.int("int", 4); // 1
        base.aggregate(KIND_STRUCT, "sk_buff", 16, &[("len", 1, 0), ("skb", 1, 32)]); // 2
        base.ptr(2); // 3
        base.aggregate(
            KIND_STRUCT,
            "nf_hook_ops",
            8,
            &[("hooknum", 1, 0), ("priority", 1, 32)],
        ); // 4
        let mut module = Builder::split(&base);
        module.function("nf_conntrack_in", 5, &[("skb", 3), ("state", 1)]); // 5, 6
        module.aggregate(
            KIND_STRUCT,
            "nft_base_chain",
            24,
            &[("ops", 4, 0), ("type", 1, 64), ("chain", 1, 128)],
        ); // 7
        (base.build(), module.build())
    }

    #[test]
    fn split_btf_continues_the_base_ids_and_names() {
        let (base, module) = base_and_module();
        let base = Arc::new(Btf::parse(&base, "base").unwrap());
        let module = Btf::parse_split(&module, "module", Arc::clone(&base)).unwrap();
        assert_eq!(base.func_id("nf_conntrack_in"), None);
        assert_eq!(module.func_id("nf_conntrack_in"), Some(6));
        assert!(module.defines_func("nf_conntrack_in"));
        assert_eq!(module.params("nf_conntrack_in").unwrap(), ["skb", "state"]);
        // Own struct, descending into a base struct's member.
        assert_eq!(
            module
                .member_offset("nft_base_chain", "ops.priority")
                .unwrap(),
            4
        );
        assert_eq!(module.member_offset("nft_base_chain", "chain").unwrap(), 16);
        // Base structs are found through the module too.
        assert_eq!(module.member_offset("sk_buff", "skb").unwrap(), 4);
        assert!(base.member_offset("nft_base_chain", "chain").is_err());
        // Parsed without its base (what reading only vmlinux's way did), the names are lost.
        let alone = Btf::parse(&base_and_module().1, "alone").unwrap();
        assert_eq!(alone.func_id("nf_conntrack_in"), None);
    }
}
