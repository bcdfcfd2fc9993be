//! A small reader of the kernel's raw BTF (`/sys/kernel/btf/vmlinux`), enough to find struct
//! member offsets the kernel programs need (`Config`): a struct by name, then a member by a
//! dotted path, descending into anonymous struct/union members on the way (`sk_buff.dev` and
//! `sk_buff.network_header` sit inside anonymous unions and `struct_group`s).
//!
//! Format (the kernel's Documentation/bpf/btf.rst): a header (magic 0xeB9F, version, flags,
//! hdr_len, then type and string section offsets/lengths relative to the header's end), a type
//! section of variable-length records (`struct btf_type`: name_off, info, size/type, then
//! kind-specific data), and a string section of NUL-terminated names. Type ids start at 1.

use std::{collections::HashMap, path::Path};

use profiler_common::datapath::{
    Config, ARG_CT_SKB, ARG_CT_STATE, ARG_IPT_SKB, ARG_IPT_STATE, ARG_IPT_TABLE, ARG_NFT_CHAIN,
    ARG_NFT_PKT, ARG_UNKNOWN,
};

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
        };
        for (i, ty) in btf.types.iter().enumerate() {
            if ty.kind == KIND_STRUCT && ty.name_off != 0 && !ty.members.is_empty() {
                let name = btf.name(ty.name_off).to_owned();
                btf.structs.entry(name).or_insert(i as u32 + 1);
            }
            if ty.kind == KIND_FUNC && ty.name_off != 0 {
                let name = btf.name(ty.name_off).to_owned();
                btf.funcs.entry(name).or_insert(i as u32 + 1);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Option<&Type> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize))
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
        let id = *self.structs.get(name).ok_or_else(|| BtfError::NoStruct {
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
        let func = self.get(*self.funcs.get(name)?)?;
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

    /// Fills what the fentry/fexit netfilter fallback reads (`Config::nf_*`, `xt_*`, `nft_*`,
    /// `fentry_args`). Never fails: whatever this kernel lacks stays 0 / `ARG_UNKNOWN`, and the
    /// program that needs it then records nothing (its load is refused first, in practice:
    /// a function missing from BTF cannot be traced).
    pub fn fill_fentry_config(&self, config: &mut Config) {
        let offset = |name: &str, path: &str| self.member_offset(name, path).unwrap_or(0);
        config.nf_state_hook = offset("nf_hook_state", "hook");
        config.nf_state_net = offset("nf_hook_state", "net");
        config.nf_state_pf = offset("nf_hook_state", "pf");
        config.xt_table_priority = offset("xt_table", "priority");
        config.nft_pkt_skb = offset("nft_pktinfo", "skb");
        config.nft_pkt_state = offset("nft_pktinfo", "state");
        config.nft_chain_priority = match (
            self.member_offset("nft_base_chain", "ops.priority"),
            self.member_offset("nft_base_chain", "chain"),
        ) {
            (Ok(priority), Ok(chain)) => priority as i32 - chain as i32,
            _ => 0,
        };
        config.fentry_args = [ARG_UNKNOWN; 8];
        let position = |func: &str, param: &str| -> u8 {
            self.params(func)
                .and_then(|params| params.iter().position(|p| *p == param))
                .map_or(ARG_UNKNOWN, |i| i as u8)
        };
        // ipt_do_table(priv, skb, state) since 5.19 (the table is `priv`); (skb, state, table)
        // before.
        config.fentry_args[ARG_IPT_SKB] = position("ipt_do_table", "skb");
        config.fentry_args[ARG_IPT_STATE] = position("ipt_do_table", "state");
        config.fentry_args[ARG_IPT_TABLE] = match position("ipt_do_table", "priv") {
            ARG_UNKNOWN => position("ipt_do_table", "table"),
            at => at,
        };
        config.fentry_args[ARG_CT_SKB] = position("nf_conntrack_in", "skb");
        config.fentry_args[ARG_CT_STATE] = position("nf_conntrack_in", "state");
        config.fentry_args[ARG_NFT_PKT] = position("nft_do_chain", "pkt");
        config.fentry_args[ARG_NFT_CHAIN] = position("nft_do_chain", "priv");
    }

    /// Fills the kernel-struct offsets of `config` (`skb_*`, `dev_*`, `net_ns_inum`).
    pub fn fill_config(&self, config: &mut Config) -> Result<(), BtfError> {
        config.skb_head = self.member_offset("sk_buff", "head")?;
        config.skb_network_header = self.member_offset("sk_buff", "network_header")?;
        config.skb_dev = self.member_offset("sk_buff", "dev")?;
        config.dev_ifindex = self.member_offset("net_device", "ifindex")?;
        // `possible_net_t nd_net` holds `struct net *net` (without CONFIG_NET_NS it is empty,
        // and `dev_net()` is always init_net; netprof needs namespaces anyway).
        config.dev_nd_net = self.member_offset("net_device", "nd_net.net")?;
        config.net_ns_inum = self.member_offset("net", "ns.inum")?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a raw BTF blob from type records and strings.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
            }
        }
        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn push(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }
        fn int(&mut self, name: &str, size: u32) {
            let n = self.string(name);
            self.push(&[n, KIND_INT << 24, size, size * 8]);
        }
        fn ptr(&mut self, to: u32) {
            self.push(&[0, KIND_PTR << 24, to]);
        }
        fn typedef(&mut self, name: &str, to: u32) {
            let n = self.string(name);
            self.push(&[n, KIND_TYPEDEF << 24, to]);
        }
        /// members: (name, type, bit offset)
        fn aggregate(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) {
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
        fn function(&mut self, name: &str, proto_id: u32, params: &[(&str, u32)]) {
            self.push(&[0, KIND_FUNC_PROTO << 24 | params.len() as u32, 1]);
            for (param, ty) in params {
                let n = self.string(param);
                self.push(&[n, *ty]);
            }
            let n = self.string(name);
            self.push(&[n, KIND_FUNC << 24, proto_id]);
        }
        fn build(&self) -> Vec<u8> {
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

    /// Offsets as `bpftool btf dump file /sys/kernel/btf/vmlinux format raw` prints them
    /// (`bits_offset`), found by walking its text the same way (anonymous members included).
    /// id -> (kind, [(name, type id, bit offset)]); entry 0 holds the type's own name/target.
    type RawTypes = HashMap<u32, (String, Vec<(String, u32, u32)>)>;

    fn bpftool_offset(raw: &str, strukt: &str, path: &str) -> Option<u32> {
        let mut types: RawTypes = HashMap::new();
        let mut by_name: HashMap<String, u32> = HashMap::new();
        let mut current = None;
        for line in raw.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                let (id, rest) = rest.split_once("] ")?;
                let id: u32 = id.parse().ok()?;
                let mut words = rest.split_whitespace();
                let kind = words.next()?.to_owned();
                let name = words.next()?.trim_matches('\'').to_owned();
                let target = rest
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("type_id="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if kind == "STRUCT" && !by_name.contains_key(&name) {
                    by_name.insert(name.clone(), id);
                }
                types.insert(id, (kind, vec![(name, target, 0)]));
                current = Some(id);
            } else if let (Some(id), Some(rest)) = (current, line.strip_prefix('\t')) {
                let name = rest.split('\'').nth(1)?.to_owned();
                let field = |key: &str| {
                    rest.split_whitespace()
                        .find_map(|w| w.strip_prefix(key))
                        .and_then(|v| v.parse::<u32>().ok())
                };
                // Enum values and function parameters have no bits_offset: not members.
                if let (Some(entry), Some(ty), Some(off)) =
                    (types.get_mut(&id), field("type_id="), field("bits_offset="))
                {
                    entry.1.push((name, ty, off));
                }
            }
        }
        fn resolve(types: &RawTypes, mut id: u32) -> u32 {
            while let Some((kind, m)) = types.get(&id) {
                if ["TYPEDEF", "CONST", "VOLATILE"].contains(&kind.as_str()) {
                    id = m[0].1;
                } else {
                    break;
                }
            }
            id
        }
        fn find(types: &RawTypes, id: u32, want: &str) -> Option<(u32, u32)> {
            for (name, ty, off) in types.get(&id)?.1.iter().skip(1) {
                if name == want {
                    return Some((*off, *ty));
                }
                if name == "(anon)" {
                    let inner = resolve(types, *ty);
                    if let Some((o, t)) = find(types, inner, want) {
                        return Some((off + o, t));
                    }
                }
            }
            None
        }
        let mut id = *by_name.get(strukt)?;
        let mut bits = 0;
        for segment in path.split('.') {
            let (off, ty) = find(&types, id, segment)?;
            bits += off;
            id = resolve(&types, ty);
        }
        Some(bits / 8)
    }

    #[test]
    fn fentry_arguments_follow_each_kernels_signature() {
        // Since 5.19: ipt_do_table(void *priv, struct sk_buff *skb, const struct nf_hook_state *state).
        let mut b = Builder::new();
        b.int("int", 4); // 1
        b.function("ipt_do_table", 2, &[("priv", 1), ("skb", 1), ("state", 1)]); // 2, 3
        b.function("nft_do_chain", 4, &[("pkt", 1), ("priv", 1)]); // 4, 5
        let mut config = Config::default();
        Btf::parse(&b.build(), "new")
            .unwrap()
            .fill_fentry_config(&mut config);
        assert_eq!(config.fentry_args[ARG_IPT_SKB..=ARG_IPT_TABLE], [1, 2, 0]);
        assert_eq!(config.fentry_args[ARG_NFT_PKT..=ARG_NFT_CHAIN], [0, 1]);
        // nf_conntrack_in is missing: its positions stay unknown, and so do absent structs.
        assert_eq!(config.fentry_args[ARG_CT_SKB], ARG_UNKNOWN);
        assert_eq!((config.nf_state_net, config.nft_chain_priority), (0, 0));

        // Before: ipt_do_table(struct sk_buff *skb, const struct nf_hook_state *state, struct xt_table *table).
        let mut b = Builder::new();
        b.int("int", 4); // 1
        b.function("ipt_do_table", 2, &[("skb", 1), ("state", 1), ("table", 1)]);
        b.function("nf_conntrack_in", 4, &[("skb", 1), ("state", 1)]);
        let mut config = Config::default();
        Btf::parse(&b.build(), "old")
            .unwrap()
            .fill_fentry_config(&mut config);
        assert_eq!(config.fentry_args[ARG_IPT_SKB..=ARG_IPT_TABLE], [0, 1, 2]);
        assert_eq!(config.fentry_args[ARG_CT_SKB..=ARG_CT_STATE], [0, 1]);
    }

    #[test]
    fn live_kernel_fentry_fallback_offsets_match_bpftool() {
        let Ok(btf) = Btf::from_sys_fs() else {
            crate::testing::print_skip("btf", &format!("no readable {}", crate::ebpf::VMLINUX_BTF));
            return;
        };
        let mut config = Config::default();
        btf.fill_fentry_config(&mut config);
        println!("{config:?}");
        let Ok(raw) = std::process::Command::new("bpftool")
            .args([
                "btf",
                "dump",
                "file",
                crate::ebpf::VMLINUX_BTF,
                "format",
                "raw",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        else {
            crate::testing::print_skip("btf", "cross-check: bpftool is not installed");
            return;
        };
        for (strukt, path, ours) in [
            ("nf_hook_state", "hook", config.nf_state_hook),
            ("nf_hook_state", "net", config.nf_state_net),
            ("nf_hook_state", "pf", config.nf_state_pf),
            ("xt_table", "priority", config.xt_table_priority),
            ("nft_pktinfo", "skb", config.nft_pkt_skb),
            ("nft_pktinfo", "state", config.nft_pkt_state),
        ] {
            // A kernel without the struct leaves 0, and bpftool finds nothing either.
            assert_eq!(
                bpftool_offset(&raw, strukt, path).unwrap_or(0),
                ours,
                "{strukt}.{path}"
            );
        }
        if let (Some(priority), Some(chain)) = (
            bpftool_offset(&raw, "nft_base_chain", "ops.priority"),
            bpftool_offset(&raw, "nft_base_chain", "chain"),
        ) {
            assert_eq!(config.nft_chain_priority, priority as i32 - chain as i32);
            assert!(config.nft_chain_priority < 0, "ops comes before chain");
        }
        // The traced functions take distinct arguments where present.
        if btf.params("ipt_do_table").is_some() {
            let ipt = &config.fentry_args[ARG_IPT_SKB..=ARG_IPT_TABLE];
            assert!(
                ipt.iter().all(|&a| a < 3)
                    && ipt[0] != ipt[1]
                    && ipt[1] != ipt[2]
                    && ipt[0] != ipt[2],
                "{ipt:?}"
            );
        }
        if btf.params("nft_do_chain").is_some() {
            assert_eq!(config.fentry_args[ARG_NFT_PKT..=ARG_NFT_CHAIN], [0, 1]);
        }
    }

    #[test]
    fn live_kernel_offsets_match_bpftool() {
        let Ok(btf) = Btf::from_sys_fs() else {
            crate::testing::print_skip("btf", &format!("no readable {}", crate::ebpf::VMLINUX_BTF));
            return;
        };
        let mut config = Config::default();
        btf.fill_config(&mut config).unwrap();
        println!("{config:?}");
        let raw = std::process::Command::new("bpftool")
            .args([
                "btf",
                "dump",
                "file",
                crate::ebpf::VMLINUX_BTF,
                "format",
                "raw",
            ])
            .output();
        let Ok(raw) = raw.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()) else {
            crate::testing::print_skip("btf", "cross-check: bpftool is not installed");
            return;
        };
        for (strukt, path, ours) in [
            ("sk_buff", "head", config.skb_head),
            ("sk_buff", "network_header", config.skb_network_header),
            ("sk_buff", "dev", config.skb_dev),
            ("net_device", "ifindex", config.dev_ifindex),
            ("net_device", "nd_net.net", config.dev_nd_net),
            ("net", "ns.inum", config.net_ns_inum),
        ] {
            assert_eq!(
                bpftool_offset(&raw, strukt, path),
                Some(ours),
                "{strukt}.{path}"
            );
        }
        // Sanity: pointers are 8-aligned, the fields are inside their structs.
        assert_eq!(config.skb_head % 8, 0);
        assert_eq!(config.skb_dev % 8, 0);
        assert!(config.skb_network_header < 224 && config.skb_network_header > 0);
    }
}
