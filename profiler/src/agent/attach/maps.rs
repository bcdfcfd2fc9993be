//! What user space writes into the kernel's maps: the configuration, the flows to follow and
//! the watched devices' checkpoint ids (contract: `profiler_common::datapath`).

use std::os::fd::{AsFd, BorrowedFd};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError},
    Ebpf,
};
use profiler_common::datapath::{
    node_device_slot, pod_device_slot, Config, DeviceCheckpoints, DeviceKey, FlowKey, FlowRule,
    NodeDevice, PodDevice, MAP_CONFIG, MAP_DEVICES, MAP_FLOWS, MAP_NODE_DEVICES, MAP_POD_DEVICES,
};

use crate::agent::{
    collect::CollectError,
    devices::Device,
    flows::{config_flags, FlowSpec},
    AgentError,
};

fn map_write(map: &'static str, what: String) -> impl FnOnce(MapError) -> AgentError {
    move |source| AgentError::MapWrite {
        map,
        what,
        source: Box::new(source),
    }
}

fn find_mut<'a>(ebpf: &'a mut Ebpf, map: &'static str) -> Result<&'a mut Map, AgentError> {
    ebpf.map_mut(map)
        .ok_or(AgentError::Collect(CollectError::MapMissing { map }))
}

/// The fd of an aya map, to lend it to the netfilter loader.
pub fn map_fd(map: &Map) -> Option<BorrowedFd<'_>> {
    let data: &MapData = match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m) => m,
        _ => return None,
    };
    Some(data.fd().as_fd())
}

/// Writes `NP_CONFIG`.
pub fn write_config(ebpf: &mut Ebpf, config: &Config) -> Result<(), AgentError> {
    let what = || "the configuration".to_owned();
    let mut array: Array<&mut MapData, Config> =
        Array::try_from(find_mut(ebpf, MAP_CONFIG)?).map_err(map_write(MAP_CONFIG, what()))?;
    array
        .set(0, config, 0)
        .map_err(map_write(MAP_CONFIG, what()))
}

/// Replaces the flow table with `flows` and returns the `Config::flow_flags` they need.
pub fn write_flows(ebpf: &mut Ebpf, flows: &[FlowSpec]) -> Result<u32, AgentError> {
    let mut table: HashMap<&mut MapData, FlowKey, FlowRule> =
        HashMap::try_from(find_mut(ebpf, MAP_FLOWS)?)
            .map_err(map_write(MAP_FLOWS, "the flows".into()))?;
    let old: Vec<FlowKey> = table.keys().filter_map(Result::ok).collect();
    let new: Vec<(FlowKey, FlowRule)> = flows.iter().map(FlowSpec::kernel_entry).collect();
    for key in old {
        if !new.iter().any(|(k, _)| *k == key) {
            table
                .remove(&key)
                .map_err(map_write(MAP_FLOWS, "an old flow".into()))?;
        }
    }
    for (flow, (key, rule)) in flows.iter().zip(new) {
        table
            .insert(key, rule, 0)
            .map_err(map_write(MAP_FLOWS, format!("flow {flow}")))?;
    }
    Ok(config_flags(flows))
}

/// Why a device's tc checkpoints cannot be told apart from another's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotTaken {
    /// Two watched node devices whose ifindexes share a slot.
    Ifindex { other: u32 },
    /// Two watched pods' `eth0` whose MAC addresses share a slot (or one has none).
    Mac,
}

/// Writes a watched device's tc checkpoint ids where the tc programs look them up: node
/// devices by ifindex, pods' `eth0` by MAC address. `Ok(Err(..))`: its slot belongs to
/// another device, so its tc hooks cannot be measured.
pub fn write_tc_device(
    ebpf: &mut Ebpf,
    device: &Device,
) -> Result<Result<(), SlotTaken>, AgentError> {
    let what = || {
        format!(
            "device {} of {}",
            device.found.link.ifname, device.found.netns
        )
    };
    let cps = device.checkpoints();
    if device.found.on_node {
        let mut slots: Array<&mut MapData, NodeDevice> =
            Array::try_from(find_mut(ebpf, MAP_NODE_DEVICES)?)
                .map_err(map_write(MAP_NODE_DEVICES, what()))?;
        let ifindex = device.found.link.ifindex;
        let slot = node_device_slot(ifindex);
        let current = slots
            .get(&slot, 0)
            .map_err(map_write(MAP_NODE_DEVICES, what()))?;
        if current.ifindex != 0 && current.ifindex != ifindex {
            return Ok(Err(SlotTaken::Ifindex {
                other: current.ifindex,
            }));
        }
        let entry = NodeDevice {
            ifindex,
            tc_ingress: cps.tc_ingress,
            tc_egress: cps.tc_egress,
        };
        slots
            .set(slot, entry, 0)
            .map_err(map_write(MAP_NODE_DEVICES, what()))?;
    } else {
        let Some(mac) = device.found.link.mac.filter(|m| *m != [0; 6]) else {
            return Ok(Err(SlotTaken::Mac));
        };
        let mut slots: Array<&mut MapData, PodDevice> =
            Array::try_from(find_mut(ebpf, MAP_POD_DEVICES)?)
                .map_err(map_write(MAP_POD_DEVICES, what()))?;
        let slot = pod_device_slot(mac);
        let current = slots
            .get(&slot, 0)
            .map_err(map_write(MAP_POD_DEVICES, what()))?;
        if current.mac != [0; 6] && current.mac != mac {
            return Ok(Err(SlotTaken::Mac));
        }
        let entry = PodDevice {
            mac,
            tc_ingress: cps.tc_ingress,
            tc_egress: cps.tc_egress,
            _pad: [0; 6],
        };
        slots
            .set(slot, entry, 0)
            .map_err(map_write(MAP_POD_DEVICES, what()))?;
    }
    Ok(Ok(()))
}

/// Writes a watched device for the tp_btf device programs (`--hooks dev`), which find it by
/// namespace and ifindex.
pub fn write_traced_device(ebpf: &mut Ebpf, device: &Device) -> Result<(), AgentError> {
    let what = || {
        format!(
            "device {} of {}",
            device.found.link.ifname, device.found.netns
        )
    };
    let mut map: HashMap<&mut MapData, DeviceKey, DeviceCheckpoints> =
        HashMap::try_from(find_mut(ebpf, MAP_DEVICES)?).map_err(map_write(MAP_DEVICES, what()))?;
    map.insert(device.key(), device.checkpoints(), 0)
        .map_err(map_write(MAP_DEVICES, what()))
}
