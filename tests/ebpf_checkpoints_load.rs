//! The datapath checkpoint programs (contract: `profiler_common::datapath`) against the real
//! verifier and real packets, without the agent:
//!
//! 1. every program of the aya object (tc, tp_btf, tracepoints, admission) and all 35 netfilter
//!    programs with their admission program (netprof's own loader, reusing the aya object's
//!    maps) load, every checkpoint program's JIT image is at most 1.5 KB, and all are freed
//!    after drop;
//! 2. runs in a veth lab with the programs attached by hand: exact hits, admissions, segments
//!    and drops for pings (locally sent ones admitted at the first LOCAL_OUT point, replies at
//!    the uplink's tc ingress), VXLAN packets judged by their inner flow, stale journeys
//!    abandoned, and traffic of no followed flow never entering journey state.
//!
//! The kernel struct offsets come from the running kernel's BTF (via bpftool) and tracefs, as
//! the agent will compute them. Needs root, kernel BTF, kernel >= 6.4, iproute2, iputils-ping,
//! sysctl and bpftool; otherwise each test prints `NETPROF-SKIP <test>: <reason> (kernel X)`
//! and returns. Run serially: `cargo test -p netprof-tests --test ebpf_checkpoints_load --
//! --test-threads=1 --nocapture`

use std::{collections::BTreeMap, os::fd::AsFd};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap as AyaHashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        tc::TcAttachOptions, BtfTracePoint, FEntry, FExit, LinkOrder, SchedClassifier,
        TcAttachType, TracePoint,
    },
    Btf, Ebpf,
};
use netprof::agent::{nf_points::next_point_table, FlowSpec};
use netprof::ebpf::{
    load_object,
    netfilter::{
        Hook, NetfilterLink, NetfilterLoader, NetfilterProgram, ProgramArray as NfProgramArray,
        NF_OBJECT,
    },
};
use netprof_tests::{
    aya_map_fds, bpftool_program, ifindex, kfree_skb_reason, netns_inum, ping, program_unloaded,
    skip_netfilter_test, tracepoint_field_offset, KernelBtf, Netns, VethLab,
};
use profiler_common::datapath::{
    nf_checkpoint, node_device_slot, Config, DeviceCheckpoints, DeviceKey, FlowKey, FlowRule,
    Journey, NodeDevice, ALL_MAPS, AYA_PROGRAMS, COUNTER_ABANDONED, COUNTER_ADMITTED,
    COUNTER_COMPLETED, COUNTER_COUNT, COUNTER_DROPPED, COUNTER_JOURNEY_LONG, COUNTER_LOG_FULL,
    COUNTER_READ_ERRORS, COUNTER_REPEATS, COUNTER_SAMPLED_OUT, COUNTER_SLOT_BUSY, CP_CONSUMED,
    DEVICE_CP_BASE, END_CONSUMED, END_DROPPED, JOURNEY_CAP, JOURNEY_SLOTS, MAP_CONFIG,
    MAP_COUNTERS, MAP_DEVICES, MAP_FLOWS, MAP_JOURNEY_LOG, MAP_NF_ADMIT, MAP_NODE_DEVICES,
    MAP_TAGS, MAP_TC_ADMIT, NF_HOOK_LOCAL_OUT, NF_POINT_COUNT, NF_POINT_PRIORITIES, NF_TRACED,
    PROG_BACKLOG, PROG_CONSUME_SKB, PROG_CONSUME_SKB_BTF, PROG_DELIVER_BTF, PROG_DEV_RX,
    PROG_DEV_TX, PROG_KFREE_SKB, PROG_KFREE_SKB_BTF, PROG_NF_ADMIT, PROG_NF_OUT_ENTRY,
    PROG_NF_POINT, PROG_TCP_RETRANSMIT, PROG_TC_ADMIT, PROG_TC_EGRESS, PROG_TC_INGRESS,
    PROG_TC_POD_EGRESS, PROG_TC_POD_INGRESS, PROG_TC_UPLINK_EGRESS, PROG_TC_UPLINK_INGRESS,
    SEGMENT_INBOUND, TP_BACKLOG, TP_DELIVER, TP_DEV_RX, TP_DEV_TX, VERIFIER_TWINS,
};

const TOOLS: &[&str] = &["ip", "ping", "bpftool", "sysctl"];
const PINGS: u64 = 20;
/// The bound on a checkpoint program's JIT image.
const MAX_CHECKPOINT_JIT_BYTES: u64 = 1536;

const COUNTER_NAMES: [&str; COUNTER_COUNT as usize] = [
    "admitted",
    "completed",
    "dropped",
    "abandoned",
    "slot_busy",
    "log_full",
    "(unused)",
    "read_errors",
    "retransmits",
    "repeats",
    "sampled_out",
    "journey_long",
];

/// Device checkpoint ids the tests give `eno1` (the uplink) in `a`.
const CP_TP_RX: u16 = DEVICE_CP_BASE;
const CP_TC_INGRESS: u16 = DEVICE_CP_BASE + 1;
const CP_TC_EGRESS: u16 = DEVICE_CP_BASE + 2;
const CP_TP_TX: u16 = DEVICE_CP_BASE + 3;
const CP_BACKLOG: u16 = DEVICE_CP_BASE + 4;
/// ... and `vxlan0` in the VXLAN test.
const VXLAN_CP_BASE: u16 = DEVICE_CP_BASE + 5;

/// The programs whose JIT images are bounded: the ones on a followed packet's path.
const CHECKPOINT_PROGRAMS: [&str; 9] = [
    PROG_TC_INGRESS,
    PROG_TC_EGRESS,
    PROG_TC_UPLINK_INGRESS,
    PROG_TC_UPLINK_EGRESS,
    PROG_TC_POD_INGRESS,
    PROG_TC_POD_EGRESS,
    PROG_DEV_RX,
    PROG_DEV_TX,
    PROG_BACKLOG,
];

/// The configuration for this kernel: struct offsets from BTF, tracepoint offsets from tracefs.
fn kernel_config(node_netns_inum: u32) -> Result<Config> {
    let btf = KernelBtf::load()?;
    let field = |event: &str, name: &str| {
        let group = if event == "tcp_retransmit_skb" {
            "tcp"
        } else {
            "skb"
        };
        tracepoint_field_offset(group, event, name)
    };
    Ok(Config {
        skb_head: btf.offset_of("sk_buff", "head")?,
        skb_network_header: btf.offset_of("sk_buff", "network_header")?,
        skb_dev: btf.offset_of("sk_buff", "dev")?,
        dev_ifindex: btf.offset_of("net_device", "ifindex")?,
        dev_nd_net: btf.offset_of("net_device", "nd_net.net")?,
        net_ns_inum: btf.offset_of("net", "ns.inum")?,
        tp_kfree_skbaddr: field("kfree_skb", "skbaddr")?,
        tp_kfree_reason: field("kfree_skb", "reason")?,
        tp_consume_skbaddr: field("consume_skb", "skbaddr")?,
        tp_retrans_saddr: field("tcp_retransmit_skb", "saddr")?,
        tp_retrans_daddr: field("tcp_retransmit_skb", "daddr")?,
        tp_retrans_sport: field("tcp_retransmit_skb", "sport")?,
        tp_retrans_dport: field("tcp_retransmit_skb", "dport")?,
        node_netns_inum,
        vxlan_port: VXLAN_PORT,
        stale_ns: 1_000_000_000,
        uplink_ingress_cp: CP_TC_INGRESS,
        uplink_egress_cp: CP_TC_EGRESS,
        ..Config::default()
    })
}

/// Loads every program of the aya object that this kernel allows; returns (name, id).
fn load_aya_programs(ebpf: &mut Ebpf) -> Result<Vec<(&'static str, u32)>> {
    let btf = Btf::from_sys_fs().context("kernel BTF")?;
    let mut ids = Vec::new();
    for name in [
        PROG_TC_INGRESS,
        PROG_TC_EGRESS,
        PROG_TC_UPLINK_INGRESS,
        PROG_TC_UPLINK_EGRESS,
        PROG_TC_POD_INGRESS,
        PROG_TC_POD_EGRESS,
        PROG_TC_ADMIT,
    ] {
        let program: &mut SchedClassifier = program(ebpf, name)?.try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
        ids.push((name, program.info()?.id()));
    }
    for (name, tp) in [
        (PROG_DEV_RX, TP_DEV_RX),
        (PROG_DEV_TX, TP_DEV_TX),
        (PROG_BACKLOG, TP_BACKLOG),
        (PROG_KFREE_SKB_BTF, "kfree_skb"),
        (PROG_CONSUME_SKB_BTF, "consume_skb"),
        (PROG_DELIVER_BTF, TP_DELIVER),
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

/// Kernel ids of the aya object's shared maps.
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

/// Puts the aya object's admission program where the tc checkpoints tail-call it.
fn install_tc_admission(ebpf: &mut Ebpf) -> Result<()> {
    let fd = {
        let admit: &mut SchedClassifier = program(ebpf, PROG_TC_ADMIT)?.try_into()?;
        admit.fd()?.try_clone()?
    };
    let mut array = ProgramArray::try_from(ebpf.map_mut(MAP_TC_ADMIT).context("tc admission")?)?;
    array.set(0, &fd, 0)?;
    Ok(())
}

/// The netfilter programs' admission in its program array, loaded with the aya maps.
fn load_nf_admission(ebpf: &Ebpf) -> Result<(NfProgramArray, NetfilterProgram)> {
    let loader = NetfilterLoader::new(NF_OBJECT).reuse_maps(aya_map_fds(ebpf, &ALL_MAPS)?);
    let admit = loader.load(PROG_NF_ADMIT)?;
    let array = NfProgramArray::create(MAP_NF_ADMIT, 1)?;
    array.set(0, &admit)?;
    Ok((array, admit))
}

#[test]
fn every_checkpoint_program_loads_small_and_is_freed_on_drop() -> Result<()> {
    const TEST: &str = "every_checkpoint_program_loads_small_and_is_freed_on_drop";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    // Real offsets: the verifier checks each BTF-typed load against the struct at its offset.
    let mut ebpf = load_object(&kernel_config(0)?).context("loading the aya object")?;
    let aya_ids = load_aya_programs(&mut ebpf)?;
    let map_ids = aya_map_ids(&ebpf)?;
    println!(
        "aya object: {} programs loaded; maps {map_ids:?}",
        aya_ids.len()
    );
    let mut too_big = Vec::new();
    for (name, id) in &aya_ids {
        let info = bpftool_program(*id)?;
        print_program(&info);
        if CHECKPOINT_PROGRAMS.contains(name) && info.jited_bytes > MAX_CHECKPOINT_JIT_BYTES {
            too_big.push((name.to_string(), info.jited_bytes));
        }
    }

    let (array, admit) = load_nf_admission(&ebpf)?;
    let loader = NetfilterLoader::new(NF_OBJECT)
        .reuse_maps(aya_map_fds(&ebpf, &ALL_MAPS)?)
        .reuse_map(MAP_NF_ADMIT, array.fd());
    let mut nf = Vec::new();
    for name in [PROG_NF_POINT, PROG_NF_OUT_ENTRY] {
        let program = loader
            .load(name)
            .with_context(|| format!("loading {name}"))?;
        nf.push(program);
    }
    println!(
        "netfilter object: {} programs and admission loaded",
        nf.len()
    );
    assert_eq!(
        nf.len(),
        2,
        "the points' (and the gauge's) and the admitting point's"
    );
    print_program(&bpftool_program(admit.id())?);
    for program in &nf {
        let info = bpftool_program(program.id())?;
        print_program(&info);
        assert_eq!(info.name, program.name());
        if info.jited_bytes > MAX_CHECKPOINT_JIT_BYTES {
            too_big.push((info.name.clone(), info.jited_bytes));
        }
        // One set of maps: every map a netfilter program uses is one of the aya object's, or
        // (LOCAL_OUT) the admission program array.
        assert!(!info.map_ids.is_empty(), "{info:?}");
        let array_id = bpftool_map_id(&array)?;
        for id in &info.map_ids {
            assert!(
                map_ids.contains(id) || *id == array_id,
                "{} uses map {id}, not in {map_ids:?}",
                info.name
            );
        }
    }
    assert!(
        too_big.is_empty(),
        "checkpoint programs over {MAX_CHECKPOINT_JIT_BYTES} JIT bytes: {too_big:?}"
    );

    let ids: Vec<u32> = aya_ids
        .iter()
        .map(|(_, id)| *id)
        .chain(nf.iter().map(NetfilterProgram::id))
        .chain([admit.id()])
        .collect();
    drop(nf);
    drop(array);
    drop(admit);
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

/// The kernel id of a netfilter program array (from its fd's info).
fn bpftool_map_id(array: &NfProgramArray) -> Result<u32> {
    use std::os::fd::AsRawFd;
    let fdinfo = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        array.fd().as_fd().as_raw_fd()
    ))?;
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("map_id:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no map_id in the array's fdinfo")
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

/// A segment's values: (count, sum_ns).
type SegmentTotals = (u64, u64);

/// What the ended journeys in the log add up to.
#[derive(Default)]
struct Logged {
    hits: BTreeMap<u16, u64>,
    segments: BTreeMap<(u16, u16), SegmentTotals>,
    /// Journeys by `Journey::end`.
    ends: BTreeMap<u16, u64>,
    out_of_order: u64,
    /// Dropped journeys by (last checkpoint, drop reason).
    drops: BTreeMap<(u16, u32), u64>,
}

/// Drains the journey log, decoding the records here (not through netprof's reader).
fn logged(ebpf: &mut Ebpf) -> Result<Logged> {
    let mut ring = RingBuf::try_from(ebpf.map_mut(MAP_JOURNEY_LOG).context("journey log")?)?;
    let mut out = Logged::default();
    while let Some(record) = ring.next() {
        assert!(
            record.len() >= std::mem::size_of::<Journey>(),
            "a whole journey"
        );
        // SAFETY: the record holds a `Journey` (plain integers) as the kernel wrote it.
        let j = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<Journey>()) };
        *out.ends.entry(j.end).or_default() += 1;
        if j.end == END_DROPPED {
            *out.drops.entry((j.last_cp, j.drop_reason)).or_default() += 1;
        } else {
            assert_eq!(
                j.drop_reason, 0,
                "a reason on a journey that was not dropped"
            );
        }
        let len = usize::from(j.len).min(JOURNEY_CAP);
        for i in 0..len {
            *out.hits.entry(j.cps[i]).or_default() += 1;
            if i == 0 {
                continue;
            }
            let Some(delta) = j.offsets_ns[i].checked_sub(j.offsets_ns[i - 1]) else {
                out.out_of_order += 1;
                continue;
            };
            let total = out
                .segments
                .entry((j.cps[i - 1] | j.direction, j.cps[i]))
                .or_default();
            total.0 += 1;
            total.1 += u64::from(delta);
        }
        if j.end == END_CONSUMED {
            let total = out
                .segments
                .entry((j.last_cp | j.direction, CP_CONSUMED))
                .or_default();
            total.0 += 1;
            total.1 += j.end_ns - j.last_ns;
        }
    }
    Ok(out)
}

/// Journeys holding a slot of the tag array (every followed packet in flight).
fn tagged(ebpf: &Ebpf) -> Result<usize> {
    let map: Array<&MapData, u64> = Array::try_from(ebpf.map(MAP_TAGS).context("tags map")?)?;
    let mut live = 0;
    for slot in 0..JOURNEY_SLOTS {
        if map.get(&slot, 0)? != 0 {
            live += 1;
        }
    }
    Ok(live)
}

fn cp_name(cp: u16) -> String {
    if cp & SEGMENT_INBOUND != 0 {
        return format!("{} (inbound)", cp_name(cp & !SEGMENT_INBOUND));
    }
    let device = |base: u16, iface: &str| {
        let hook = ["tp_rx", "tc_ingress", "tc_egress", "tp_tx", "backlog"][usize::from(cp - base)];
        format!("{iface} {hook}")
    };
    match cp {
        CP_TP_RX..=CP_BACKLOG => device(CP_TP_RX, "eno1"),
        c if (VXLAN_CP_BASE..VXLAN_CP_BASE + 5).contains(&c) => device(VXLAN_CP_BASE, "vxlan0"),
        CP_CONSUMED => "consumed".into(),
        cp if cp >= nf_checkpoint(0, 0) && cp < CP_CONSUMED => {
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

/// Checkpoint ids `base..base + 5` for a device's tp_rx, tc_ingress, tc_egress, tp_tx, backlog.
fn device_checkpoints(base: u16) -> DeviceCheckpoints {
    DeviceCheckpoints {
        tp_rx: base,
        tc_ingress: base + 1,
        tc_egress: base + 2,
        tp_tx: base + 3,
        backlog: base + 4,
        _pad: 0,
    }
}

/// A device of `a` and how the tests attach its tc hooks.
struct Device {
    iface: &'static str,
    checkpoints: DeviceCheckpoints,
    /// The uplink gets the programs where paths start; other devices the plain ones.
    uplink: bool,
}

/// Loads the aya object, writes the configuration (node namespace: `ns`), the flows and the
/// devices (interfaces of `ns`), attaches tc (TCX) on those devices, the tp_btf device hooks
/// and the classic journey-end tracepoints.
fn load_checkpoints(
    ns: &Netns,
    devices: &[Device],
    flows: &[&str],
    adjust: impl FnOnce(&mut Config),
) -> Result<Ebpf> {
    let inum = netns_inum(ns)?;
    let mut config = kernel_config(inum)?;
    adjust(&mut config);
    println!("netns {} inum {inum}; config {config:?}", ns.name());

    let mut ebpf = load_object(&config).context("loading the aya object")?;
    {
        let mut map: AyaHashMap<_, FlowKey, FlowRule> =
            AyaHashMap::try_from(ebpf.map_mut(MAP_FLOWS).context("flows map")?)?;
        for flow in flows {
            let (key, rule) = flow.parse::<FlowSpec>()?.kernel_entry();
            map.insert(key, rule, 0)?;
        }
    }
    for device in devices {
        let index = ifindex(ns, device.iface)?;
        let key = DeviceKey {
            netns_inum: inum,
            ifindex: index,
        };
        println!(
            "device {}: {key:?} -> {:?}",
            device.iface, device.checkpoints
        );
        AyaHashMap::<_, DeviceKey, DeviceCheckpoints>::try_from(
            ebpf.map_mut(MAP_DEVICES).context("devices map")?,
        )?
        .insert(key, device.checkpoints, 0)?;
        let node = NodeDevice {
            ifindex: index,
            tc_ingress: device.checkpoints.tc_ingress,
            tc_egress: device.checkpoints.tc_egress,
        };
        Array::<_, NodeDevice>::try_from(
            ebpf.map_mut(MAP_NODE_DEVICES).context("node devices map")?,
        )?
        .set(node_device_slot(index), node, 0)?;
    }
    Array::<_, Config>::try_from(ebpf.map_mut(MAP_CONFIG).context("config map")?)?
        .set(0, config, 0)?;

    load_aya_programs(&mut ebpf)?;
    install_tc_admission(&mut ebpf)?;
    for device in devices {
        let (ingress, egress) = if device.uplink {
            (PROG_TC_UPLINK_INGRESS, PROG_TC_UPLINK_EGRESS)
        } else {
            (PROG_TC_INGRESS, PROG_TC_EGRESS)
        };
        for (name, attach_type) in [
            (ingress, TcAttachType::Ingress),
            (egress, TcAttachType::Egress),
        ] {
            let program: &mut SchedClassifier = program(&mut ebpf, name)?.try_into()?;
            netprof::netns::run_in(ns.name(), || {
                program.attach_with_options(
                    device.iface,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
            })?
            .with_context(|| format!("attaching {name} to {} (TCX)", device.iface))?;
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

/// The LOCAL_OUT netfilter points `points` in `ns`, the first of which admits (the agent's
/// rule), with the admission program.
struct LocalOut {
    links: Vec<NetfilterLink>,
    programs: Vec<NetfilterProgram>,
    admission: (NfProgramArray, NetfilterProgram),
}

/// The configuration for LOCAL_OUT `points` linked by [`attach_local_out`]: the first admits,
/// the shared program names the others.
fn watch_local_out(config: &mut Config, points: &[u32]) {
    config.nf_admit_cp = nf_checkpoint(NF_HOOK_LOCAL_OUT, points[0]);
    let linked = points.iter().map(|&p| (NF_HOOK_LOCAL_OUT, p)).collect();
    config.nf_next_point = next_point_table(&linked, false);
}

fn attach_local_out(ebpf: &Ebpf, ns: &Netns, points: &[u32]) -> Result<LocalOut> {
    let admission = load_nf_admission(ebpf)?;
    let loader = NetfilterLoader::new(NF_OBJECT)
        .reuse_maps(aya_map_fds(ebpf, &ALL_MAPS)?)
        .reuse_map(MAP_NF_ADMIT, admission.0.fd());
    let mut programs = Vec::new();
    let mut links = Vec::new();
    // The first point admits; the others share one program, which takes its point from
    // the journey (`Config::nf_next_point`, from `local_out_config`).
    let entry = loader.load(PROG_NF_OUT_ENTRY)?;
    let shared = loader.load(PROG_NF_POINT)?;
    for (i, &point) in points.iter().enumerate() {
        let program = if i == 0 { &entry } else { &shared };
        let priority = NF_POINT_PRIORITIES[point as usize];
        links.push(program.attach_in(Some(ns.name()), Hook::LocalOut, priority)?);
    }
    programs.extend([entry, shared]);
    Ok(LocalOut {
        links,
        programs,
        admission,
    })
}

/// What the maps hold after a run (printed as read).
struct Observed {
    counts: [u64; COUNTER_COUNT as usize],
    hits: BTreeMap<u16, u64>,
    segments: BTreeMap<(u16, u16), SegmentTotals>,
    ends: BTreeMap<u16, u64>,
    out_of_order: u64,
    drops: BTreeMap<(u16, u32), u64>,
    tagged: usize,
}

fn observe(ebpf: &mut Ebpf) -> Result<Observed> {
    let counts = counters(ebpf)?;
    for (name, value) in COUNTER_NAMES.iter().zip(counts) {
        println!("counter {name:<13} {value}");
    }
    let Logged {
        hits,
        segments,
        ends,
        out_of_order,
        drops,
    } = logged(ebpf)?;
    for (cp, n) in &hits {
        println!("hits {:<22} (cp {cp:>2}) {n}", cp_name(*cp));
    }
    for ((from, to), (count, sum_ns)) in &segments {
        println!(
            "segment {:<22} -> {:<22} count {count:>3}  mean {:>7} ns",
            cp_name(*from),
            cp_name(*to),
            sum_ns / count.max(&1)
        );
    }
    println!("journeys logged by end: {ends:?}, out of order: {out_of_order}");
    for ((last_cp, reason), n) in &drops {
        println!("drop after {} reason {reason}: {n}", cp_name(*last_cp));
    }
    let tagged = tagged(ebpf)?;
    println!("journeys holding a slot: {tagged}");
    Ok(Observed {
        counts,
        hits,
        segments,
        ends,
        out_of_order,
        drops,
        tagged,
    })
}

/// The assertions the ping runs share: `PINGS` at each of `hits`, each of `segments` with
/// `PINGS` values, requests admitted and completed, replies admitted and dropped after
/// `reply_last` (ping's raw socket takes a clone; icmp_rcv frees the original with
/// NO_SOCKET), nothing else counted, no journey left holding a slot.
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
    assert_eq!(seen.tagged, 0, "every journey ended and freed its slot");
    for counter in [
        COUNTER_ABANDONED,
        COUNTER_SLOT_BUSY,
        COUNTER_LOG_FULL,
        COUNTER_READ_ERRORS,
        COUNTER_REPEATS,
        COUNTER_SAMPLED_OUT,
        COUNTER_JOURNEY_LONG,
    ] {
        assert_eq!(
            c[counter as usize], 0,
            "{}",
            COUNTER_NAMES[counter as usize]
        );
    }
    // COUNTER_RETRANSMITS is global (any namespace's TCP of a followed flow): printed, not
    // asserted.
    let mut expected_segments = segments.to_vec();
    expected_segments.sort();
    assert_eq!(
        seen.segments.keys().copied().collect::<Vec<_>>(),
        expected_segments
    );
    for (key, (count, sum_ns)) in &seen.segments {
        assert_eq!(*count, PINGS, "segment {key:?}");
        assert!(*sum_ns > 0, "segment {key:?}");
    }
    // Every ended journey was logged once, as the way it ended.
    assert_eq!(
        seen.ends,
        BTreeMap::from([(END_CONSUMED, PINGS), (END_DROPPED, PINGS)])
    );
    assert_eq!(seen.out_of_order, 0, "out of order");
    Ok(())
}

/// Drops everything and checks the kernel frees every program (deferred: polled).
fn drop_and_check_freed(mut ebpf: Ebpf, local_out: Option<LocalOut>) -> Result<()> {
    let mut ids: Vec<u32> = Vec::new();
    if let Some(l) = &local_out {
        ids.extend(l.programs.iter().map(NetfilterProgram::id));
        ids.push(l.admission.1.id());
    }
    for name in AYA_PROGRAMS {
        match program(&mut ebpf, name)?.info() {
            Ok(info) => ids.push(info.id()),
            // Refused by this kernel (printed when loading), so never loaded.
            Err(_)
                if NF_TRACED
                    .iter()
                    .any(|(_, entry, exit)| [entry, exit].contains(&&name)) => {}
            Err(err) => return Err(err).with_context(|| format!("{name} was not loaded")),
        }
    }
    if let Some(l) = local_out {
        drop(l.links);
        drop(l.programs);
        drop(l.admission);
    }
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

fn uplink() -> Device {
    Device {
        iface: VethLab::IFACE,
        checkpoints: device_checkpoints(CP_TP_RX),
        uplink: true,
    }
}

#[test]
fn pings_pass_the_checkpoints_with_exact_counts() -> Result<()> {
    const TEST: &str = "pings_pass_the_checkpoints_with_exact_counts";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    let lab = VethLab::create_quiet()?;
    let flow = format!("icmp:{}-{}", VethLab::ADDR_A, VethLab::ADDR_B);
    let out = |p| nf_checkpoint(NF_HOOK_LOCAL_OUT, p);
    // The 7 LOCAL_OUT points in a; the first admits (locally sent packets start there), so
    // the uplink's egress does not. The other six share one program, which must name each
    // point from the journey: every hit and segment below is exact.
    let points: Vec<u32> = (0..NF_POINT_COUNT).collect();
    let mut ebpf = load_checkpoints(&lab.a, &[uplink()], &[&flow], |config| {
        watch_local_out(config, &points);
        config.uplink_egress_admits = 0;
    })?;
    let local_out = attach_local_out(&ebpf, &lab.a, &points)?;

    assert_eq!(
        counters(&ebpf)?,
        [0; COUNTER_COUNT as usize],
        "quiet before the pings"
    );
    let summary = ping(&lab.a, VethLab::ADDR_B, PINGS as u32)?;
    println!("ping: {summary}");
    assert!(summary.contains("20 received"), "{summary}");
    let seen = observe(&mut ebpf)?;

    // Requests: admitted at the first LOCAL_OUT point, then the other six, tc egress and the
    // driver hand-off on a's eno1; consumed in b (answered). Replies: their path on a starts
    // at eno1's tc ingress (the receive tracepoint before it sees them unfollowed); dropped as
    // NO_SOCKET.
    let mut hits: Vec<u16> = (0..NF_POINT_COUNT).map(out).collect();
    hits.extend([CP_TC_INGRESS, CP_TC_EGRESS, CP_TP_TX]);
    let mut segments: Vec<(u16, u16)> = (0..NF_POINT_COUNT - 1)
        .map(|p| (out(p), out(p + 1)))
        .collect();
    segments.extend([
        (out(NF_POINT_COUNT - 1), CP_TC_EGRESS),
        (CP_TC_EGRESS, CP_TP_TX),
        (CP_TP_TX, CP_CONSUMED),
    ]);
    assert_exact(&seen, &hits, &segments, CP_TC_INGRESS)?;
    drop_and_check_freed(ebpf, Some(local_out))
}

/// On a veth uplink the other node's frames are queued by `netif_rx`: `cp_backlog` marks them
/// and the uplink's tc ingress, admitting one, starts its path at that mark. Every reply's
/// journey on `a` then runs backlog -> tc ingress (one inbound segment per ping, its time the
/// wait for the softirq); the requests, followed by `a` while `b` receives them, pass `b`'s
/// backlog unrecorded (not a device of this agent).
#[test]
fn replies_start_their_path_at_a_veth_uplinks_backlog() -> Result<()> {
    const TEST: &str = "replies_start_their_path_at_a_veth_uplinks_backlog";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    let lab = VethLab::create_quiet()?;
    let flow = format!("icmp:{}-{}", VethLab::ADDR_A, VethLab::ADDR_B);
    let out = |p| nf_checkpoint(NF_HOOK_LOCAL_OUT, p);
    let uplink_ifindex = ifindex(&lab.a, VethLab::IFACE)?;
    let mut ebpf = load_checkpoints(&lab.a, &[uplink()], &[&flow], |config| {
        watch_local_out(config, &[0]);
        config.uplink_egress_admits = 0;
        config.uplink_backlog_cp = CP_BACKLOG;
        config.uplink_ifindex = uplink_ifindex;
    })?;
    let backlog: &mut BtfTracePoint = program(&mut ebpf, PROG_BACKLOG)?.try_into()?;
    backlog.attach()?;
    let local_out = attach_local_out(&ebpf, &lab.a, &[0])?;

    let summary = ping(&lab.a, VethLab::ADDR_B, PINGS as u32)?;
    println!("ping: {summary}");
    assert!(summary.contains("20 received"), "{summary}");
    let seen = observe(&mut ebpf)?;

    let hits = [out(0), CP_TC_INGRESS, CP_TC_EGRESS, CP_TP_TX, CP_BACKLOG];
    let segments = [
        (out(0), CP_TC_EGRESS),
        (CP_TC_EGRESS, CP_TP_TX),
        (CP_TP_TX, CP_CONSUMED),
        (CP_BACKLOG | SEGMENT_INBOUND, CP_TC_INGRESS),
    ];
    assert_exact(&seen, &hits, &segments, CP_TC_INGRESS)?;
    drop_and_check_freed(ebpf, Some(local_out))
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
fn vxlan_packets_are_admitted_at_the_uplink_by_their_inner_flow() -> Result<()> {
    const TEST: &str = "vxlan_packets_are_admitted_at_the_uplink_by_their_inner_flow";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    let lab = VethLab::create_quiet()?;
    add_vxlan(&lab)?;
    // Only the inner flow is followed, and no netfilter point is attached: both directions
    // start their path on a at the uplink (egress: the encapsulated request; ingress: the
    // encapsulated reply), where only a look inside the VXLAN packet finds the flow.
    let vxlan = Device {
        iface: "vxlan0",
        checkpoints: device_checkpoints(VXLAN_CP_BASE),
        uplink: false,
    };
    let flow = format!("icmp:{INNER_A}-{INNER_B}");
    let mut ebpf = load_checkpoints(&lab.a, &[uplink(), vxlan], &[&flow], |config| {
        config.uplink_egress_admits = 1;
    })?;
    let summary = ping(&lab.a, INNER_B, PINGS as u32)?;
    println!("ping over vxlan: {summary}");
    assert!(summary.contains("20 received"), "{summary}");
    let seen = observe(&mut ebpf)?;

    // Requests: admitted at eno1's tc egress (vxlan0 saw them before their path started
    // here), then the driver hand-off, consumed in b. Replies: admitted at eno1's tc ingress,
    // decapsulated (same skb) to vxlan0's receive hook and tc ingress; dropped as NO_SOCKET.
    // The replies' journeys entered on the uplink: their segments carry `SEGMENT_INBOUND`.
    let (vx_rx, vx_in) = (VXLAN_CP_BASE, VXLAN_CP_BASE + 1);
    let hits = [CP_TC_INGRESS, CP_TC_EGRESS, CP_TP_TX, vx_rx, vx_in];
    let segments = [
        (CP_TC_EGRESS, CP_TP_TX),
        (CP_TP_TX, CP_CONSUMED),
        (CP_TC_INGRESS | SEGMENT_INBOUND, vx_rx),
        (vx_rx | SEGMENT_INBOUND, vx_in),
    ];
    assert_exact(&seen, &hits, &segments, vx_in)?;
    drop_and_check_freed(ebpf, None)
}

#[test]
fn stale_journeys_are_abandoned() -> Result<()> {
    const TEST: &str = "stale_journeys_are_abandoned";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    let lab = VethLab::create_quiet()?;
    // Every journey is stale 1 ns after its last checkpoint: the next checkpoint abandons it
    // (and frees its slot), so nothing is recorded across it.
    let flow = format!("icmp:{}-{}", VethLab::ADDR_A, VethLab::ADDR_B);
    let mut ebpf = load_checkpoints(&lab.a, &[uplink()], &[&flow], |config| {
        config.stale_ns = 1;
        config.uplink_egress_admits = 1;
    })?;
    let summary = ping(&lab.a, VethLab::ADDR_B, PINGS as u32)?;
    println!("ping: {summary}");
    let seen = observe(&mut ebpf)?;
    // Admitted: requests at tc egress, replies at tc ingress. Abandoned: requests at the
    // driver hand-off (consumed later, untracked), replies when freed.
    let c = &seen.counts;
    assert_eq!(c[COUNTER_ADMITTED as usize], 2 * PINGS);
    assert_eq!(c[COUNTER_ABANDONED as usize], 2 * PINGS);
    assert_eq!(c[COUNTER_COMPLETED as usize], 0);
    assert_eq!(c[COUNTER_DROPPED as usize], 0);
    assert!(
        seen.segments.is_empty(),
        "no time recorded across a stale journey"
    );
    // Hits count when a journey ends whole: an abandoned one counts none.
    assert!(seen.hits.is_empty(), "{:?}", seen.hits);
    assert_eq!(seen.tagged, 0);
    drop_and_check_freed(ebpf, None)
}

#[test]
fn traffic_of_no_followed_flow_never_enters_journey_state() -> Result<()> {
    const TEST: &str = "traffic_of_no_followed_flow_never_enters_journey_state";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    let lab = VethLab::create_quiet()?;
    // A TCP flow between the same two addresses is followed; the pings are not (another
    // protocol), whichever checkpoint they meet: LOCAL_OUT, the uplink's tc hooks, the
    // device tracepoints.
    let flow = format!("tcp:{}-{}:5201", VethLab::ADDR_A, VethLab::ADDR_B);
    let mut ebpf = load_checkpoints(&lab.a, &[uplink()], &[&flow], |config| {
        watch_local_out(config, &[0, 1]);
        config.uplink_egress_admits = 1;
    })?;
    let local_out = attach_local_out(&ebpf, &lab.a, &[0, 1])?;
    let summary = ping(&lab.a, VethLab::ADDR_B, PINGS as u32)?;
    println!("ping: {summary}");
    assert!(summary.contains("20 received"), "{summary}");
    let seen = observe(&mut ebpf)?;
    assert_eq!(seen.counts, [0; COUNTER_COUNT as usize]);
    assert!(seen.hits.is_empty() && seen.segments.is_empty() && seen.drops.is_empty());
    assert_eq!(seen.tagged, 0, "no tag was ever written");
    drop_and_check_freed(ebpf, Some(local_out))
}
