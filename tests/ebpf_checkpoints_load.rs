//! The datapath checkpoint programs (contract: `profiler_common::datapath`) against the real
//! verifier and real packets:
//!
//! 1. every program of the aya object (tc, tp_btf, tracepoints) and all 35 netfilter programs
//!    (netprof's own loader, reusing the aya object's maps) load, and are freed after drop;
//! 2. a smoke run in a veth lab: tc (TCX) and tp_btf checkpoints on `eno1` of namespace `a`,
//!    the 7 LOCAL_OUT netfilter points in `a`, 20 pings to `b`, exact hit/admission/segment
//!    counts.
//!
//! The kernel struct offsets come from the running kernel's BTF (via bpftool) and tracefs, as
//! the agent will compute them. Needs root, kernel BTF, kernel >= 6.4, iproute2, iputils-ping,
//! sysctl and bpftool; otherwise each test prints `NETPROF-SKIP <test>: <reason> (kernel X)` and returns.
//! Run serially: `cargo test -p netprof-tests --test ebpf_checkpoints_load -- --test-threads=1
//! --nocapture`

use std::{collections::BTreeMap, net::Ipv4Addr};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap as AyaHashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        tc::TcAttachOptions, BtfTracePoint, FEntry, FExit, LinkOrder, SchedClassifier,
        TcAttachType, TracePoint,
    },
    Btf, Ebpf,
};
use netprof::ebpf::{
    netfilter::{Hook, NetfilterLink, NetfilterLoader, NetfilterProgram, NF_OBJECT},
    OBJECT,
};
use netprof_tests::{
    aya_map_fds, bpftool_program, ifindex, kfree_skb_reason, netns_inum, ping, program_unloaded,
    skip_netfilter_test, tracepoint_field_offset, KernelBtf, Netns, VethLab,
};
use profiler_common::datapath::{
    nf_checkpoint, Config, DeviceCheckpoints, DeviceKey, DropKey, SegmentKey, SegmentSlot,
    ALL_MAPS, AYA_PROGRAMS, COUNTER_ABANDONED, COUNTER_ADMITTED, COUNTER_COMPLETED, COUNTER_COUNT,
    COUNTER_DROPPED, COUNTER_DROP_FULL, COUNTER_JOURNEY_FULL, COUNTER_READ_ERRORS, COUNTER_REPEATS,
    COUNTER_SEGMENT_FULL, CP_CONSUMED, CP_NONE, DEVICE_CP_BASE, MAP_CONFIG, MAP_COUNTERS,
    MAP_CP_HITS, MAP_DEVICES, MAP_DROPS, MAP_ENDPOINTS, MAP_JOURNEYS, MAP_SEGMENTS,
    MAX_CHECKPOINTS, MAX_SEGMENTS, NF_HOOK_COUNT, NF_HOOK_LOCAL_OUT, NF_POINT_COUNT,
    NF_POINT_PRIORITIES, NF_PROGRAMS, NF_TRACED, PROG_CONSUME_SKB, PROG_CONSUME_SKB_BTF,
    PROG_DEV_RX, PROG_DEV_TX, PROG_KFREE_SKB, PROG_KFREE_SKB_BTF, PROG_TCP_RETRANSMIT,
    PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_TC_POD_EGRESS, PROG_TC_POD_INGRESS, TP_DEV_RX, TP_DEV_TX,
    VERIFIER_TWINS,
};

const TOOLS: &[&str] = &["ip", "ping", "bpftool", "sysctl"];
const PINGS: u64 = 20;

const COUNTER_NAMES: [&str; COUNTER_COUNT as usize] = [
    "admitted",
    "completed",
    "dropped",
    "abandoned",
    "journey_full",
    "segment_full",
    "drop_full",
    "read_errors",
    "retransmits",
    "repeats",
    "sampled_out",
];

/// Device checkpoint ids the smoke test gives `eno1` in `a`.
const CP_TP_RX: u16 = DEVICE_CP_BASE;
const CP_TC_INGRESS: u16 = DEVICE_CP_BASE + 1;
const CP_TC_EGRESS: u16 = DEVICE_CP_BASE + 2;
const CP_TP_TX: u16 = DEVICE_CP_BASE + 3;
/// ... and `vxlan0` in the VXLAN test.
const VXLAN_CP_BASE: u16 = DEVICE_CP_BASE + 4;
const VXLAN_CP_LAST: u16 = VXLAN_CP_BASE + 3;

/// The configuration for this kernel: struct offsets from BTF, tracepoint offsets from tracefs.
fn kernel_config(node_netns_inum: u32) -> Result<Config> {
    let btf = KernelBtf::load()?;
    Ok(Config {
        skb_head: btf.offset_of("sk_buff", "head")?,
        skb_network_header: btf.offset_of("sk_buff", "network_header")?,
        skb_dev: btf.offset_of("sk_buff", "dev")?,
        dev_ifindex: btf.offset_of("net_device", "ifindex")?,
        dev_nd_net: btf.offset_of("net_device", "nd_net.net")?,
        net_ns_inum: btf.offset_of("net", "ns.inum")?,
        tp_kfree_skbaddr: tracepoint_field_offset("skb", "kfree_skb", "skbaddr")?,
        tp_kfree_reason: tracepoint_field_offset("skb", "kfree_skb", "reason")?,
        tp_consume_skbaddr: tracepoint_field_offset("skb", "consume_skb", "skbaddr")?,
        tp_retrans_saddr: tracepoint_field_offset("tcp", "tcp_retransmit_skb", "saddr")?,
        tp_retrans_daddr: tracepoint_field_offset("tcp", "tcp_retransmit_skb", "daddr")?,
        node_netns_inum,
        vxlan_port: VXLAN_PORT,
        stale_ns: 1_000_000_000,
        // The tests' netfilter points sit on LOCAL_OUT from point 0, where pings from `a`
        // first meet netprof (as the agent sets it: its first LOCAL_OUT point admits).
        nf_admit_cp: nf_checkpoint(NF_HOOK_LOCAL_OUT, 0),
        ..Config::default()
    })
}

/// Loads the aya object's checkpoint programs (not attached); returns (name, id).
fn load_aya_programs(ebpf: &mut Ebpf) -> Result<Vec<(&'static str, u32)>> {
    let btf = Btf::from_sys_fs().context("kernel BTF")?;
    let mut ids = Vec::new();
    for name in [
        PROG_TC_INGRESS,
        PROG_TC_EGRESS,
        PROG_TC_POD_INGRESS,
        PROG_TC_POD_EGRESS,
    ] {
        let program: &mut SchedClassifier = program(ebpf, name)?.try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
        ids.push((name, program.info()?.id()));
    }
    for (name, tp) in [
        (PROG_DEV_RX, TP_DEV_RX),
        (PROG_DEV_TX, TP_DEV_TX),
        (PROG_KFREE_SKB_BTF, "kfree_skb"),
        (PROG_CONSUME_SKB_BTF, "consume_skb"),
    ] {
        let program: &mut BtfTracePoint = program(ebpf, name)?.try_into()?;
        program
            .load(tp, &btf)
            .with_context(|| format!("loading {name}"))?;
        ids.push((name, program.info()?.id()));
    }
    for name in [PROG_KFREE_SKB, PROG_CONSUME_SKB, PROG_TCP_RETRANSMIT] {
        let program: &mut TracePoint = program(ebpf, name)?.try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
        ids.push((name, program.info()?.id()));
    }
    // The fallback's bodies through this kernel's verifier, as tp_btf twins: they must load.
    for (name, tp) in VERIFIER_TWINS {
        let program: &mut BtfTracePoint = program(ebpf, name)?.try_into()?;
        program
            .load(tp, &btf)
            .with_context(|| format!("loading the verifier twin {name}"))?;
        ids.push((name, program.info()?.id()));
    }
    // The netfilter fallback's fentry/fexit pairs: where the kernel refuses them (EPERM) they
    // are left out with the reason printed; any other error (the verifier rejecting our
    // program, a missing function) fails.
    for (function, entry, exit) in NF_TRACED {
        let loaded = (|| -> Result<[u32; 2]> {
            let fentry: &mut FEntry = program(ebpf, entry)?.try_into()?;
            fentry.load(function, &btf)?;
            let entry_id = fentry.info()?.id();
            let fexit: &mut FExit = program(ebpf, exit)?.try_into()?;
            fexit.load(function, &btf)?;
            Ok([entry_id, fexit.info()?.id()])
        })();
        match loaded {
            Ok([entry_id, exit_id]) => ids.extend([(entry, entry_id), (exit, exit_id)]),
            Err(err) if refused_by_kernel(&err) => {
                println!("not loaded, the kernel refuses it: {entry}/{exit} on {function}: {err:#}")
            }
            Err(err) => {
                return Err(err).with_context(|| format!("loading {entry}/{exit} on {function}"))
            }
        }
    }
    Ok(ids)
}

/// Whether a load failed because the kernel refuses the program type (EPERM in the cause
/// chain), as opposed to the verifier (EACCES, EINVAL) or BTF rejecting this program.
fn refused_by_kernel(err: &anyhow::Error) -> bool {
    const EPERM: i32 = 1;
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(EPERM))
    })
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} is not in the object"))
}

fn print_program(info: &netprof_tests::ProgramInfo) {
    println!(
        "  id {:>6}  {:<16} {:<12} xlated insns {:>5}  jited bytes {:>6}  maps {:?}",
        info.id, info.name, info.kind, info.xlated_insns, info.jited_bytes, info.map_ids
    );
}

/// Kernel ids of the aya object's maps.
fn aya_map_ids(ebpf: &Ebpf) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for name in ALL_MAPS {
        let map = ebpf.map(name).with_context(|| format!("map {name}"))?;
        let data: &MapData = match map {
            aya::maps::Map::Array(m)
            | aya::maps::Map::HashMap(m)
            | aya::maps::Map::LruHashMap(m)
            | aya::maps::Map::PerCpuArray(m)
            | aya::maps::Map::PerCpuHashMap(m) => m,
            other => bail!("unexpected map type {other:?}"),
        };
        ids.push(data.info()?.id());
    }
    Ok(ids)
}

#[test]
fn every_checkpoint_program_loads_and_is_freed_on_drop() -> Result<()> {
    const TEST: &str = "every_checkpoint_program_loads_and_is_freed_on_drop";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    let mut ebpf = Ebpf::load(OBJECT).context("loading the aya object")?;
    let aya_ids = load_aya_programs(&mut ebpf)?;
    let map_ids = aya_map_ids(&ebpf)?;
    println!(
        "aya object: {} programs loaded; maps {map_ids:?}",
        aya_ids.len()
    );
    for (_, id) in &aya_ids {
        print_program(&bpftool_program(*id)?);
    }

    let loader = NetfilterLoader::new(NF_OBJECT).reuse_maps(aya_map_fds(&ebpf, &ALL_MAPS)?);
    let mut nf = Vec::new();
    for name in NF_PROGRAMS.iter().flatten() {
        let program = loader
            .load(name)
            .with_context(|| format!("loading {name}"))?;
        nf.push(program);
    }
    println!("netfilter object: {} programs loaded", nf.len());
    assert_eq!(nf.len(), 35);
    for program in &nf {
        let info = bpftool_program(program.id())?;
        print_program(&info);
        assert_eq!(info.name, program.name());
        // One set of maps: every map a netfilter program uses is one of the aya object's.
        assert!(!info.map_ids.is_empty(), "{info:?}");
        for id in &info.map_ids {
            assert!(
                map_ids.contains(id),
                "{} uses map {id}, not in {map_ids:?}",
                info.name
            );
        }
    }

    let ids: Vec<u32> = aya_ids
        .iter()
        .map(|(_, id)| *id)
        .chain(nf.iter().map(NetfilterProgram::id))
        .collect();
    drop(nf);
    drop(ebpf);
    for id in &ids {
        assert!(
            program_unloaded(*id)?,
            "program {id} still loaded after drop"
        );
    }
    println!("after drop: all {} programs unloaded", ids.len());
    Ok(())
}

fn ipv4_key(addr: &str) -> Result<u32> {
    let addr: Ipv4Addr = addr.parse()?;
    // The kernel compares the 4 header bytes as a u32 in memory order.
    Ok(u32::from_ne_bytes(addr.octets()))
}

fn percpu_u64(ebpf: &Ebpf, map: &str, index: u32) -> Result<u64> {
    let array: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(ebpf.map(map).with_context(|| format!("map {map}"))?)?;
    Ok(array.get(&index, 0)?.iter().sum())
}

fn counters(ebpf: &Ebpf) -> Result<[u64; COUNTER_COUNT as usize]> {
    let mut out = [0; COUNTER_COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = percpu_u64(ebpf, MAP_COUNTERS, i as u32)?;
    }
    Ok(out)
}

/// A segment histogram summed over CPUs: (count, sum_ns, sum of the buckets).
type SegmentTotals = (u64, u64, u64);

/// Segment histograms summed over CPUs, by (from, to).
fn segments(ebpf: &Ebpf) -> Result<BTreeMap<(u16, u16), SegmentTotals>> {
    // Read straight from the map (not through netprof's reader): every CPU's slots.
    let map: PerCpuArray<&MapData, SegmentSlot> =
        PerCpuArray::try_from(ebpf.map(MAP_SEGMENTS).context("segments map")?)?;
    let mut out: BTreeMap<(u16, u16), SegmentTotals> = BTreeMap::new();
    for index in 0..MAX_SEGMENTS {
        for slot in map
            .get(&index, 0)?
            .iter()
            .filter(|s| s.key != SegmentKey::default())
        {
            let total = out.entry((slot.key.from, slot.key.to)).or_default();
            total.0 += slot.hist.count;
            total.1 += slot.hist.sum_ns;
            total.2 += slot.hist.buckets.iter().sum::<u64>();
        }
    }
    Ok(out)
}

fn drops(ebpf: &Ebpf) -> Result<BTreeMap<(u16, u32), u64>> {
    let map: PerCpuHashMap<&MapData, DropKey, u64> =
        PerCpuHashMap::try_from(ebpf.map(MAP_DROPS).context("drops map")?)?;
    let mut out = BTreeMap::new();
    for entry in map.iter() {
        let (key, values) = entry?;
        out.insert((key.last_cp, key.reason), values.iter().sum());
    }
    Ok(out)
}

fn journeys(ebpf: &Ebpf) -> Result<usize> {
    let map: AyaHashMap<&MapData, u64, profiler_common::datapath::Journey> =
        AyaHashMap::try_from(ebpf.map(MAP_JOURNEYS).context("journeys map")?)?;
    Ok(map.keys().count())
}

fn cp_name(cp: u16) -> String {
    let device = |base: u16, iface: &str| {
        let hook = ["tp_rx", "tc_ingress", "tc_egress", "tp_tx"][usize::from(cp - base)];
        format!("{iface} {hook}")
    };
    match cp {
        CP_TP_RX..=CP_TP_TX => device(CP_TP_RX, "eno1"),
        VXLAN_CP_BASE..=VXLAN_CP_LAST => device(VXLAN_CP_BASE, "vxlan0"),
        CP_CONSUMED => "consumed".into(),
        cp if cp >= nf_checkpoint(0, 0) && cp < nf_checkpoint(NF_HOOK_COUNT, 0) => {
            let i = u32::from(cp - nf_checkpoint(0, 0));
            format!(
                "nf hook {} point {}",
                i / NF_POINT_COUNT,
                i % NF_POINT_COUNT
            )
        }
        cp => format!("cp {cp}"),
    }
}

/// Checkpoint ids `base..base + 4` for a device's tp_rx, tc_ingress, tc_egress, tp_tx.
fn device_checkpoints(base: u16) -> DeviceCheckpoints {
    DeviceCheckpoints {
        tp_rx: base,
        tc_ingress: base + 1,
        tc_egress: base + 2,
        tp_tx: base + 3,
        admit: 1,
        _pad: [0; 3],
    }
}

/// Loads the aya object, writes the configuration (node namespace: `ns`), the endpoints and
/// the devices (interfaces of `ns`), attaches tc (TCX) on those devices and the tp_btf and
/// tracepoint programs globally.
fn load_checkpoints(
    ns: &Netns,
    devices: &[(&str, DeviceCheckpoints)],
    endpoints: &[&str],
) -> Result<Ebpf> {
    load_checkpoints_with(ns, devices, endpoints, |_| {})
}

/// [`load_checkpoints`] with a change to the configuration.
fn load_checkpoints_with(
    ns: &Netns,
    devices: &[(&str, DeviceCheckpoints)],
    endpoints: &[&str],
    adjust: impl FnOnce(&mut Config),
) -> Result<Ebpf> {
    let inum = netns_inum(ns)?;
    let mut config = kernel_config(inum)?;
    adjust(&mut config);
    println!("netns {} inum {inum}; config {config:?}", ns.name());

    let mut ebpf = Ebpf::load(OBJECT).context("loading the aya object")?;
    Array::<_, Config>::try_from(ebpf.map_mut(MAP_CONFIG).context("config map")?)?
        .set(0, config, 0)?;
    {
        let mut map: AyaHashMap<_, u32, u32> =
            AyaHashMap::try_from(ebpf.map_mut(MAP_ENDPOINTS).context("endpoints map")?)?;
        for addr in endpoints {
            map.insert(ipv4_key(addr)?, 1, 0)?;
        }
    }
    {
        let mut map: AyaHashMap<_, DeviceKey, DeviceCheckpoints> =
            AyaHashMap::try_from(ebpf.map_mut(MAP_DEVICES).context("devices map")?)?;
        for (iface, checkpoints) in devices {
            let key = DeviceKey {
                netns_inum: inum,
                ifindex: ifindex(ns, iface)?,
            };
            println!("device {iface}: {key:?} -> {checkpoints:?}");
            map.insert(key, checkpoints, 0)?;
        }
    }

    load_aya_programs(&mut ebpf)?;
    for (name, attach_type) in [
        (PROG_TC_INGRESS, TcAttachType::Ingress),
        (PROG_TC_EGRESS, TcAttachType::Egress),
    ] {
        let program: &mut SchedClassifier = program(&mut ebpf, name)?.try_into()?;
        for (iface, _) in devices {
            netprof::netns::run_in(ns.name(), || {
                program.attach_with_options(
                    iface,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
            })?
            .with_context(|| format!("attaching {name} to {iface} (TCX)"))?;
        }
    }
    for name in [PROG_DEV_RX, PROG_DEV_TX] {
        let program: &mut BtfTracePoint = program(&mut ebpf, name)?.try_into()?;
        program.attach()?;
    }
    for (name, group, event) in [
        (PROG_KFREE_SKB, "skb", "kfree_skb"),
        (PROG_CONSUME_SKB, "skb", "consume_skb"),
        (PROG_TCP_RETRANSMIT, "tcp", "tcp_retransmit_skb"),
    ] {
        let program: &mut TracePoint = program(&mut ebpf, name)?.try_into()?;
        program.attach(group, event)?;
    }
    Ok(ebpf)
}

/// What the maps hold after a run (printed as read).
struct Observed {
    counts: [u64; COUNTER_COUNT as usize],
    hits: BTreeMap<u16, u64>,
    segments: BTreeMap<(u16, u16), SegmentTotals>,
    drops: BTreeMap<(u16, u32), u64>,
    in_flight: usize,
}

fn observe(ebpf: &Ebpf) -> Result<Observed> {
    let counts = counters(ebpf)?;
    for (name, value) in COUNTER_NAMES.iter().zip(counts) {
        println!("counter {name:<13} {value}");
    }
    let mut hits = BTreeMap::new();
    for cp in 0..MAX_CHECKPOINTS {
        let n = percpu_u64(ebpf, MAP_CP_HITS, cp)?;
        if n != 0 {
            let cp = cp as u16;
            println!("hits {:<22} (cp {cp:>2}) {n}", cp_name(cp));
            hits.insert(cp, n);
        }
    }
    let segments = segments(ebpf)?;
    for ((from, to), (count, sum_ns, buckets)) in &segments {
        println!(
            "segment {:<22} -> {:<22} count {count:>3}  buckets {buckets:>3}  mean {:>7} ns",
            cp_name(*from),
            cp_name(*to),
            sum_ns / count.max(&1)
        );
    }
    let drops = drops(ebpf)?;
    for ((last_cp, reason), n) in &drops {
        println!("drop after {} reason {reason}: {n}", cp_name(*last_cp));
    }
    let in_flight = journeys(ebpf)?;
    println!("journeys left in flight: {in_flight}");
    Ok(Observed {
        counts,
        hits,
        segments,
        drops,
        in_flight,
    })
}

/// The assertions both lab tests share: `PINGS` at each of `hits`, each of `segments` with
/// `PINGS` values, requests admitted and completed, replies admitted and dropped after
/// `reply_last` (ping's raw socket takes a clone; icmp_rcv frees the original with
/// NO_SOCKET), nothing else counted, nothing left in flight.
fn assert_exact(
    seen: &Observed,
    hits: &[u16],
    segments: &[(u16, u16)],
    reply_last: u16,
) -> Result<()> {
    let expected_hits: BTreeMap<u16, u64> = hits.iter().map(|cp| (*cp, PINGS)).collect();
    assert_eq!(seen.hits, expected_hits);
    let c = &seen.counts;
    assert_eq!(c[COUNTER_ADMITTED as usize], 2 * PINGS, "admitted");
    assert_eq!(c[COUNTER_COMPLETED as usize], PINGS, "completed");
    assert_eq!(c[COUNTER_DROPPED as usize], PINGS, "dropped");
    let no_socket = kfree_skb_reason("NO_SOCKET")?;
    assert_eq!(
        seen.drops,
        BTreeMap::from([((reply_last, no_socket), PINGS)])
    );
    assert_eq!(seen.in_flight, 0, "every journey ended");
    for counter in [
        COUNTER_ABANDONED,
        COUNTER_JOURNEY_FULL,
        COUNTER_SEGMENT_FULL,
        COUNTER_DROP_FULL,
        COUNTER_READ_ERRORS,
        COUNTER_REPEATS,
    ] {
        assert_eq!(
            c[counter as usize], 0,
            "{}",
            COUNTER_NAMES[counter as usize]
        );
    }
    // COUNTER_RETRANSMITS is global (any namespace's TCP between endpoint addresses): printed,
    // not asserted.
    let mut expected_segments = segments.to_vec();
    expected_segments.sort();
    assert_eq!(
        seen.segments.keys().copied().collect::<Vec<_>>(),
        expected_segments
    );
    for (key, (count, sum_ns, buckets)) in &seen.segments {
        assert_eq!(*count, PINGS, "segment {key:?}");
        assert_eq!(buckets, count, "segment {key:?}: buckets sum to count");
        assert!(*sum_ns > 0, "segment {key:?}");
    }
    assert_eq!(
        seen.segments.values().map(|s| s.0).sum::<u64>(),
        PINGS * segments.len() as u64
    );
    Ok(())
}

/// Drops everything and checks the kernel frees every program (deferred: polled).
fn drop_and_check_freed(
    mut ebpf: Ebpf,
    nf: Vec<NetfilterProgram>,
    links: Vec<NetfilterLink>,
) -> Result<()> {
    let mut ids: Vec<u32> = nf.iter().map(NetfilterProgram::id).collect();
    for name in AYA_PROGRAMS {
        match program(&mut ebpf, name)?.info() {
            Ok(info) => ids.push(info.id()),
            // Refused by this kernel (printed when loading), so never loaded.
            Err(aya::programs::ProgramError::NotLoaded)
                if NF_TRACED
                    .iter()
                    .any(|(_, entry, exit)| [entry, exit].contains(&&name)) => {}
            Err(err) => return Err(err).with_context(|| format!("{name} was not loaded")),
        }
    }
    drop(links);
    drop(nf);
    drop(ebpf);
    for id in &ids {
        assert!(
            program_unloaded(*id)?,
            "program {id} still loaded after drop"
        );
    }
    println!("after drop: all {} programs unloaded", ids.len());
    Ok(())
}

#[test]
fn pings_pass_the_checkpoints_with_exact_counts() -> Result<()> {
    const TEST: &str = "pings_pass_the_checkpoints_with_exact_counts";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    let lab = VethLab::create_quiet()?;
    let ebpf = load_checkpoints(
        &lab.a,
        &[(VethLab::IFACE, device_checkpoints(CP_TP_RX))],
        &[VethLab::ADDR_A, VethLab::ADDR_B],
    )?;
    // The 7 LOCAL_OUT points in a, sharing the aya object's maps.
    let loader = NetfilterLoader::new(NF_OBJECT).reuse_maps(aya_map_fds(&ebpf, &ALL_MAPS)?);
    let mut nf = Vec::new();
    let mut links = Vec::new();
    for (point, priority) in NF_POINT_PRIORITIES.iter().enumerate() {
        let program = loader.load(NF_PROGRAMS[NF_HOOK_LOCAL_OUT as usize][point])?;
        links.push(program.attach_in(Some(lab.a.name()), Hook::LocalOut, *priority)?);
        nf.push(program);
    }

    assert_eq!(
        counters(&ebpf)?,
        [0; COUNTER_COUNT as usize],
        "quiet before the pings"
    );
    let summary = ping(&lab.a, VethLab::ADDR_B, PINGS as u32)?;
    println!("ping: {summary}");
    assert!(summary.contains("20 received"), "{summary}");
    let seen = observe(&ebpf)?;

    // Requests: admitted at the first LOCAL_OUT point, then the other six, tc egress and the
    // driver hand-off on a's eno1; consumed in b (answered). Replies: admitted at a's eno1
    // receive tracepoint (their first checkpoint), then tc ingress; dropped as NO_SOCKET.
    let out = |p| nf_checkpoint(NF_HOOK_LOCAL_OUT, p);
    let mut hits: Vec<u16> = (0..NF_POINT_COUNT).map(out).collect();
    hits.extend([CP_TP_RX, CP_TC_INGRESS, CP_TC_EGRESS, CP_TP_TX]);
    let mut segments: Vec<(u16, u16)> = (0..NF_POINT_COUNT - 1)
        .map(|p| (out(p), out(p + 1)))
        .collect();
    segments.extend([
        (out(NF_POINT_COUNT - 1), CP_TC_EGRESS),
        (CP_TC_EGRESS, CP_TP_TX),
        (CP_TP_TX, CP_CONSUMED),
        (CP_TP_RX, CP_TC_INGRESS),
    ]);
    assert_exact(&seen, &hits, &segments, CP_TC_INGRESS)?;
    drop_and_check_freed(ebpf, nf, links)
}

/// Inner (overlay) addresses of the VXLAN test; the underlay is the veth lab's.
const INNER_A: &str = "198.19.0.1";
const INNER_B: &str = "198.19.0.2";
/// flannel's VXLAN port.
const VXLAN_PORT: u16 = 8472;

/// A flannel-style VXLAN overlay over the veth lab: `vxlan0` (VNI 1, port 8472) in each
/// namespace, inner 198.19.0.1/24 in a and .2/24 in b.
fn add_vxlan(lab: &VethLab) -> Result<()> {
    for (ns, local, remote, inner) in [
        (&lab.a, VethLab::ADDR_A, VethLab::ADDR_B, INNER_A),
        (&lab.b, VethLab::ADDR_B, VethLab::ADDR_A, INNER_B),
    ] {
        let port = VXLAN_PORT.to_string();
        ns.ip(&[
            "link",
            "add",
            "vxlan0",
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            &port,
            "local",
            local,
            "remote",
            remote,
            "dev",
            VethLab::IFACE,
        ])?;
        ns.ip(&["addr", "add", &format!("{inner}/24"), "dev", "vxlan0"])?;
        ns.ip(&["link", "set", "vxlan0", "up"])?;
    }
    Ok(())
}

#[test]
fn vxlan_packets_are_admitted_by_inner_addresses() -> Result<()> {
    const TEST: &str = "vxlan_packets_are_admitted_by_inner_addresses";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    let lab = VethLab::create_quiet()?;
    add_vxlan(&lab)?;
    // Only the inner addresses are endpoints: on eno1 a packet is admitted only by looking
    // inside the VXLAN encapsulation.
    let ebpf = load_checkpoints(
        &lab.a,
        &[
            (VethLab::IFACE, device_checkpoints(CP_TP_RX)),
            ("vxlan0", device_checkpoints(VXLAN_CP_BASE)),
        ],
        &[INNER_A, INNER_B],
    )?;
    assert_eq!(kernel_config(0)?.vxlan_port, VXLAN_PORT);
    let summary = ping(&lab.a, INNER_B, PINGS as u32)?;
    println!("ping over vxlan: {summary}");
    assert!(summary.contains("20 received"), "{summary}");
    let seen = observe(&ebpf)?;

    // Requests: admitted at vxlan0's tc egress (plain inner IPv4), then vxlan0's driver
    // hand-off, encapsulation (same skb) to eno1's tc egress and driver; consumed in b.
    // Replies: admitted at eno1's receive tracepoint by their inner addresses, then eno1 tc
    // ingress, decapsulation to vxlan0's receive and tc ingress; dropped as NO_SOCKET.
    let (vx_rx, vx_in, vx_out, vx_tx) = (
        VXLAN_CP_BASE,
        VXLAN_CP_BASE + 1,
        VXLAN_CP_BASE + 2,
        VXLAN_CP_BASE + 3,
    );
    let hits = [
        CP_TP_RX,
        CP_TC_INGRESS,
        CP_TC_EGRESS,
        CP_TP_TX,
        vx_rx,
        vx_in,
        vx_out,
        vx_tx,
    ];
    let segments = [
        (vx_out, vx_tx),
        (vx_tx, CP_TC_EGRESS),
        (CP_TC_EGRESS, CP_TP_TX),
        (CP_TP_TX, CP_CONSUMED),
        (CP_TP_RX, CP_TC_INGRESS),
        (CP_TC_INGRESS, vx_rx),
        (vx_rx, vx_in),
    ];
    assert_exact(&seen, &hits, &segments, vx_in)?;
    drop_and_check_freed(ebpf, Vec::new(), Vec::new())
}

#[test]
fn vxlan_packets_are_admitted_at_tc_by_inner_addresses() -> Result<()> {
    const TEST: &str = "vxlan_packets_are_admitted_at_tc_by_inner_addresses";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    let lab = VethLab::create_quiet()?;
    add_vxlan(&lab)?;
    // Only eno1, without its receive tracepoint: both directions are first seen by tc, which
    // must find the inner addresses by direct packet access.
    let eno1 = DeviceCheckpoints {
        tp_rx: CP_NONE,
        ..device_checkpoints(CP_TP_RX)
    };
    let ebpf = load_checkpoints(&lab.a, &[(VethLab::IFACE, eno1)], &[INNER_A, INNER_B])?;
    let summary = ping(&lab.a, INNER_B, PINGS as u32)?;
    println!("ping over vxlan: {summary}");
    assert!(summary.contains("20 received"), "{summary}");
    let seen = observe(&ebpf)?;

    // Requests: admitted at eno1 tc egress (encapsulated), driver hand-off, consumed in b.
    // Replies: admitted at eno1 tc ingress (encapsulated), dropped after decapsulation.
    let hits = [CP_TC_INGRESS, CP_TC_EGRESS, CP_TP_TX];
    let segments = [(CP_TC_EGRESS, CP_TP_TX), (CP_TP_TX, CP_CONSUMED)];
    assert_exact(&seen, &hits, &segments, CP_TC_INGRESS)?;
    drop_and_check_freed(ebpf, Vec::new(), Vec::new())
}

#[test]
fn stale_journeys_are_abandoned() -> Result<()> {
    const TEST: &str = "stale_journeys_are_abandoned";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    let lab = VethLab::create_quiet()?;
    // Every journey is stale 1 ns after its last checkpoint: each later checkpoint abandons it
    // and starts a new one there, and its end (consumed or freed) only counts it abandoned.
    let ebpf = load_checkpoints_with(
        &lab.a,
        &[(VethLab::IFACE, device_checkpoints(CP_TP_RX))],
        &[VethLab::ADDR_A, VethLab::ADDR_B],
        |config| config.stale_ns = 1,
    )?;
    let summary = ping(&lab.a, VethLab::ADDR_B, PINGS as u32)?;
    println!("ping: {summary}");
    let seen = observe(&ebpf)?;
    let expected_hits: BTreeMap<u16, u64> = [CP_TP_RX, CP_TC_INGRESS, CP_TC_EGRESS, CP_TP_TX]
        .into_iter()
        .map(|cp| (cp, PINGS))
        .collect();
    assert_eq!(seen.hits, expected_hits);
    // Admitted: requests at tc egress, replies at the receive tracepoint. Abandoned: requests
    // at the driver hand-off and when consumed, replies at tc ingress and when freed.
    let c = &seen.counts;
    assert_eq!(c[COUNTER_ADMITTED as usize], 2 * PINGS);
    assert_eq!(c[COUNTER_ABANDONED as usize], 4 * PINGS);
    assert_eq!(c[COUNTER_COMPLETED as usize], 0);
    assert_eq!(c[COUNTER_DROPPED as usize], 0);
    assert!(
        seen.segments.is_empty(),
        "no time recorded across a stale journey"
    );
    assert!(seen.drops.is_empty());
    assert_eq!(seen.in_flight, 0);
    drop_and_check_freed(ebpf, Vec::new(), Vec::new())
}
