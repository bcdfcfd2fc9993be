//! What the kernel programs read from kernel structs and traced functions' arguments, from
//! BTF: offsets into vmlinux's structs for every program, and for the fentry/fexit netfilter
//! fallback the argument positions and struct offsets of each traced function, read from the
//! BTF that defines it (vmlinux's or its module's).

use std::sync::Arc;

use profiler_common::datapath::{
    Config, ARG_CT_SKB, ARG_CT_STATE, ARG_IPT_SKB, ARG_IPT_STATE, ARG_IPT_TABLE, ARG_NFT_CHAIN,
    ARG_NFT_PKT, ARG_UNKNOWN,
};

use super::{Btf, BtfError, KernelBtf};

impl Btf {
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

/// Fills what the fentry/fexit netfilter fallback reads (`Config::nf_*`, `xt_*`, `nft_*`,
/// `fentry_args`). Never fails: whatever this kernel lacks stays 0 / `ARG_UNKNOWN`, and the
/// program that needs it then records nothing (its load is refused first, in practice: a
/// function in no BTF cannot be traced).
pub fn fill_fentry_config(kernel: &mut KernelBtf, config: &mut Config) {
    // Each function's own BTF (a module's answers for vmlinux's types too); vmlinux's when
    // the function cannot be found, so the structs that are there still get offsets.
    let mut view = |function: &str| -> Arc<Btf> {
        kernel
            .function(function)
            .map(|found| found.btf)
            .unwrap_or_else(|_| Arc::clone(kernel.vmlinux()))
    };
    let (conntrack, iptables, nftables) = (
        view("nf_conntrack_in"),
        view("ipt_do_table"),
        view("nft_do_chain"),
    );
    let offset = |btf: &Btf, name: &str, path: &str| btf.member_offset(name, path).unwrap_or(0);
    config.nf_state_hook = offset(&conntrack, "nf_hook_state", "hook");
    config.nf_state_net = offset(&conntrack, "nf_hook_state", "net");
    config.nf_state_pf = offset(&conntrack, "nf_hook_state", "pf");
    config.xt_table_priority = offset(&iptables, "xt_table", "priority");
    config.nft_pkt_skb = offset(&nftables, "nft_pktinfo", "skb");
    config.nft_pkt_state = offset(&nftables, "nft_pktinfo", "state");
    config.nft_chain_priority = match (
        nftables.member_offset("nft_base_chain", "ops.priority"),
        nftables.member_offset("nft_base_chain", "chain"),
    ) {
        (Ok(priority), Ok(chain)) => priority as i32 - chain as i32,
        _ => 0,
    };
    config.fentry_args = [ARG_UNKNOWN; 8];
    let position = |btf: &Btf, func: &str, param: &str| -> u8 {
        btf.params(func)
            .and_then(|params| params.iter().position(|p| *p == param))
            .map_or(ARG_UNKNOWN, |i| i as u8)
    };
    // ipt_do_table(priv, skb, state) since 5.19 (the table is `priv`); (skb, state, table)
    // before.
    let ipt = |param: &str| position(&iptables, "ipt_do_table", param);
    config.fentry_args[ARG_IPT_SKB] = ipt("skb");
    config.fentry_args[ARG_IPT_STATE] = ipt("state");
    config.fentry_args[ARG_IPT_TABLE] = match ipt("priv") {
        ARG_UNKNOWN => ipt("table"),
        at => at,
    };
    config.fentry_args[ARG_CT_SKB] = position(&conntrack, "nf_conntrack_in", "skb");
    config.fentry_args[ARG_CT_STATE] = position(&conntrack, "nf_conntrack_in", "state");
    config.fentry_args[ARG_NFT_PKT] = position(&nftables, "nft_do_chain", "pkt");
    config.fentry_args[ARG_NFT_CHAIN] = position(&nftables, "nft_do_chain", "priv");
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::tests::Builder;
    use super::*;

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

    fn vmlinux_only(b: &Builder) -> KernelBtf {
        KernelBtf::vmlinux_only(Btf::parse(&b.build(), "test").unwrap())
    }

    #[test]
    fn fentry_arguments_follow_each_kernels_signature() {
        // Since 5.19: ipt_do_table(void *priv, struct sk_buff *skb, const struct nf_hook_state *state).
        let mut b = Builder::new();
        b.int("int", 4); // 1
        b.function("ipt_do_table", 2, &[("priv", 1), ("skb", 1), ("state", 1)]); // 2, 3
        b.function("nft_do_chain", 4, &[("pkt", 1), ("priv", 1)]); // 4, 5
        let mut config = Config::default();
        fill_fentry_config(&mut vmlinux_only(&b), &mut config);
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
        fill_fentry_config(&mut vmlinux_only(&b), &mut config);
        assert_eq!(config.fentry_args[ARG_IPT_SKB..=ARG_IPT_TABLE], [0, 1, 2]);
        assert_eq!(config.fentry_args[ARG_CT_SKB..=ARG_CT_STATE], [0, 1]);
    }

    #[test]
    fn live_kernel_fentry_fallback_offsets_match_bpftool() {
        let Ok(mut kernel) = KernelBtf::from_sys_fs() else {
            crate::testing::print_skip("btf", &format!("no readable {}", crate::ebpf::VMLINUX_BTF));
            return;
        };
        let btf = Arc::clone(kernel.vmlinux());
        let mut config = Config::default();
        fill_fentry_config(&mut kernel, &mut config);
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
