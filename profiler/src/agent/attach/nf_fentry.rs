//! The netfilter checkpoints where the kernel has no netfilter links (before 6.4), or when
//! asked for (`--hooks nf-fentry`): fentry/fexit pairs on conntrack and the table walkers
//! (`NF_TRACED`, programs in `profiler-ebpf/src/nf_fentry.rs`). Each pair stands for the two
//! netfilter points around its function's priority, so the catalog, segments and stages are
//! those of the links.
//!
//! A pair attaches whole or not at all (an entry without its exit would leave every journey
//! at the entry point). What cannot be had is reported as not measured with the kernel's
//! reason (a kernel that refuses fentry says EPERM), which is what tests see on such a kernel.
//!
//! The programs are loaded by netprof's own tracing loader ([`crate::ebpf::tracing`]), not
//! aya: on distribution kernels the traced functions live in modules, and a program on a
//! module's function needs the module's BTF object at load.

use std::{
    collections::{BTreeSet, HashMap as StdHashMap},
    os::fd::BorrowedFd,
};

use profiler_common::datapath::{
    nf_points_around, Config, ALL_MAPS, ARG_CT_SKB, ARG_CT_STATE, ARG_IPT_SKB, ARG_IPT_STATE,
    ARG_IPT_TABLE, ARG_NFT_CHAIN, ARG_NFT_PKT, NF_HOOK_COUNT, NF_POINT_COUNT, NF_PRI_CONNTRACK,
    NF_TRACED,
};

use super::{chain, maps::map_fd, netfilter::NetfilterLayout, Inner};
use crate::{
    agent::btf::KernelBtf,
    ebpf::{
        self, btf_objects,
        tracing::{TraceEdge, TraceTarget, TracingLink, TracingProgram},
    },
};

/// The fallback's links, closed like tracepoint links (each waits for RCU).
#[derive(Debug, Default)]
pub(super) struct Links(Vec<TracingLink>);

impl Links {
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

/// The fallback's state: its links and the traced functions' programs.
#[derive(Debug, Default)]
pub(super) struct FentryFamily {
    pub links: Links,
    pub programs: Vec<Pair>,
}

/// A traced function's two loaded programs (attached again at each duty-cycle window).
#[derive(Debug)]
pub(super) struct Pair {
    pub(super) function: &'static str,
    entry: TracingProgram,
    exit: TracingProgram,
}

impl Pair {
    pub(super) fn program_ids(&self) -> [(u32, &str); 2] {
        [
            (self.entry.id(), self.entry.name()),
            (self.exit.id(), self.exit.name()),
        ]
    }
}

/// Loads and attaches every traced function's pair it can; `why` says why links were not used.
pub(super) fn attach(inner: &mut Inner, layout: &NetfilterLayout, why: &str) {
    let mut kernel = match KernelBtf::from_sys_fs() {
        Ok(kernel) => kernel,
        Err(err) => {
            inner.not_measured(
                "netfilter via fentry/fexit",
                format!("{why}; the kernel's BTF cannot be read: {err}"),
            );
            return;
        }
    };
    log::info!("netfilter via fentry/fexit: {why}");
    let mut outcomes = Vec::new();
    {
        let mut maps = StdHashMap::new();
        for name in ALL_MAPS {
            if let Some(fd) = inner.ebpf.map(name).and_then(map_fd) {
                maps.insert(name.to_owned(), fd);
            }
        }
        for (function, entry, exit) in NF_TRACED {
            let outcome = layout_known(&inner.config, function)
                .and_then(|()| load_pair(&mut kernel, &maps, function, entry, exit))
                .and_then(|pair| attach_pair(&pair).map(|links| (pair, links)));
            outcomes.push((function, entry, exit, outcome));
        }
    }
    for (function, entry, exit, outcome) in outcomes {
        match outcome {
            Ok((pair, links)) => {
                inner.fentry.links.0.extend(links);
                inner.fentry.programs.push(pair);
            }
            Err(reason) => inner.not_measured(
                format!("netfilter via fentry/fexit on {function} ({entry}, {exit})"),
                format!("{why}; {reason}"),
            ),
        }
    }
    let traced: Vec<&str> = inner.fentry.programs.iter().map(|p| p.function).collect();
    let watched = watched_points(layout, &traced);
    inner.nf.attached.extend(watched);
}

/// Whether this kernel's BTF gave everything `function`'s programs read: the argument
/// positions (within the arity the programs assume) and the struct offsets.
fn layout_known(config: &Config, function: &str) -> Result<(), String> {
    let args = &config.fentry_args;
    let (positions, arity, offsets): (&[usize], u8, &[(&str, bool)]) = match function {
        "nf_conntrack_in" => (&[ARG_CT_SKB, ARG_CT_STATE], 2, &[]),
        "ipt_do_table" => (
            &[ARG_IPT_SKB, ARG_IPT_STATE, ARG_IPT_TABLE],
            3,
            &[("xt_table.priority", config.xt_table_priority != 0)],
        ),
        "nft_do_chain" => (
            &[ARG_NFT_PKT, ARG_NFT_CHAIN],
            2,
            &[
                (
                    "nft_base_chain.ops.priority",
                    config.nft_chain_priority != 0,
                ),
                ("nft_pktinfo.state", config.nft_pkt_state != 0),
            ],
        ),
        other => return Err(format!("{other} is not a function netprof traces")),
    };
    if positions.iter().any(|&p| args[p] >= arity) {
        return Err(format!("its signature in this kernel's BTF is not one netprof knows (expected {arity} arguments with skb/state/table or pkt/priv)"));
    }
    let mut missing: Vec<&str> = offsets
        .iter()
        .filter(|(_, known)| !known)
        .map(|(name, _)| *name)
        .collect();
    if config.nf_state_net == 0 {
        missing.push("nf_hook_state.net");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("this kernel's BTF lacks {}", missing.join(", ")))
    }
}

/// Loads `function`'s entry and exit programs against the BTF that defines it: vmlinux's,
/// or its module's (then with that module's BTF object, which aya cannot pass).
fn load_pair(
    kernel: &mut KernelBtf,
    maps: &StdHashMap<String, BorrowedFd<'_>>,
    function: &'static str,
    entry: &str,
    exit: &str,
) -> Result<Pair, String> {
    let located = kernel.function(function).map_err(|err| err.to_string())?;
    let object = match &located.module {
        Some(module) => Some(btf_objects::find(module).map_err(|err| chain(&err))?),
        None => None,
    };
    let target = TraceTarget {
        function,
        btf_id: located.type_id,
        btf_object: object.as_ref().map(|o| o.fd()),
    };
    let load = |program: &str, edge: TraceEdge| {
        TracingProgram::load(ebpf::OBJECT, program, edge, &target, maps).map_err(|err| chain(&err))
    };
    Ok(Pair {
        function,
        entry: load(entry, TraceEdge::Entry)?,
        exit: load(exit, TraceEdge::Exit)?,
    })
}

/// Attaches a loaded pair: the exit first, so no pass is seen entering without leaving.
fn attach_pair(pair: &Pair) -> Result<[TracingLink; 2], String> {
    let exit = pair.exit.attach().map_err(|err| chain(&err))?;
    let entry = pair.entry.attach().map_err(|err| chain(&err))?;
    Ok([exit, entry])
}

/// Attaches the traced functions' pairs again (a duty-cycle window opening).
pub(super) fn reattach(inner: &mut Inner) {
    let mut links = Vec::new();
    for pair in &inner.fentry.programs {
        match attach_pair(pair) {
            Ok(pair_links) => links.extend(pair_links),
            Err(reason) => log::warn!(
                "duty cycle: netfilter via fentry/fexit on {}: {reason}",
                pair.function
            ),
        }
    }
    inner.fentry.links.0.extend(links);
}

/// The `(hook, point)`s the traced functions stand for: around conntrack on the hooks it has,
/// and around every table chain (either walker) on its hook; with an unknown layout, every
/// point. Conntrack's confirm at the very end of a hook is not traced (as with the links, it
/// is part of the segment after the last point).
fn watched_points(layout: &NetfilterLayout, traced: &[&str]) -> BTreeSet<(u32, u32)> {
    let conntrack = traced.contains(&"nf_conntrack_in");
    let tables = traced
        .iter()
        .any(|f| *f == "ipt_do_table" || *f == "nft_do_chain");
    let mut watched = BTreeSet::new();
    let Some(hooks) = layout else {
        if conntrack || tables {
            watched.extend(
                (0..NF_HOOK_COUNT)
                    .flat_map(|hook| (0..NF_POINT_COUNT).map(move |point| (hook, point))),
            );
        }
        return watched;
    };
    for (hook, priorities) in hooks.iter().enumerate() {
        for &priority in priorities {
            let traced_here = match priority {
                i32::MAX => false,
                NF_PRI_CONNTRACK => conntrack,
                _ => tables,
            };
            if !traced_here {
                continue;
            }
            let (below, above) = nf_points_around(priority);
            watched.extend(
                [below, above]
                    .into_iter()
                    .flatten()
                    .map(|point| (hook as u32, point)),
            );
        }
    }
    watched
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::nf_points;

    #[test]
    fn a_function_is_loaded_only_when_btf_gave_all_it_reads() {
        let mut config = Config::default();
        let Ok(mut kernel) = crate::agent::btf::KernelBtf::from_sys_fs() else {
            crate::testing::print_skip("nf_fentry", "no kernel BTF");
            return;
        };
        crate::agent::btf::fill_fentry_config(&mut kernel, &mut config);
        let btf = std::sync::Arc::clone(kernel.vmlinux());
        btf.fill_config(&mut config).unwrap();
        for (function, _, _) in NF_TRACED {
            if btf.params(function).is_some() {
                assert_eq!(layout_known(&config, function), Ok(()), "{function}");
            }
        }
        let mut old = config;
        old.fentry_args[ARG_CT_STATE] = 2;
        assert!(layout_known(&old, "nf_conntrack_in")
            .unwrap_err()
            .contains("signature"));
        let mut bare = config;
        bare.nft_chain_priority = 0;
        bare.nf_state_net = 0;
        assert_eq!(
            layout_known(&bare, "nft_do_chain").unwrap_err(),
            "this kernel's BTF lacks nft_base_chain.ops.priority, nf_hook_state.net"
        );
    }

    #[test]
    fn the_traced_functions_stand_for_the_points_the_links_would_be() {
        let tables: Vec<String> = ["nat", "filter"]
            .iter()
            .map(|t| format!("ip {t}"))
            .collect();
        let layout = nf_points::registered(&tables);
        let links: BTreeSet<(u32, u32)> = layout
            .as_ref()
            .unwrap()
            .iter()
            .enumerate()
            .flat_map(|(hook, prios)| {
                nf_points::points(prios)
                    .into_iter()
                    .map(move |p| (hook as u32, p))
            })
            .collect();
        let all = watched_points(&layout, &["nf_conntrack_in", "nft_do_chain"]);
        // The pairs stand for both points around each function (sixteen under kube-proxy's
        // tables); the links leave out one point of each empty bracket, so they are fewer.
        assert_eq!(all.len(), 16, "{all:?}");
        assert!(links.is_subset(&all), "links {links:?} fentry {all:?}");
        // Without conntrack traced, its brackets (-201/-199 on PRE_ROUTING and LOCAL_OUT) are
        // watched only where a table sits next to them.
        let tables_only = watched_points(&layout, &["nft_do_chain"]);
        assert!(
            !tables_only.contains(&(0, 1)) && tables_only.contains(&(0, 3)),
            "{tables_only:?}"
        );
        assert!(watched_points(&layout, &[]).is_empty());
        assert_eq!(
            watched_points(&None, &["ipt_do_table"]).len(),
            (NF_HOOK_COUNT * NF_POINT_COUNT) as usize
        );
    }
}
