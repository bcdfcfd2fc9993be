//! Which devices an agent watches: in the node namespace the uplink, bridges, VXLAN devices and
//! host-side veths; in each pod namespace given, the pod's `eth0`.
//! Devices come from `ip -j -d link show` inside the namespace; each gets five checkpoint ids
//! from `DEVICE_CP_BASE` up (dev-rx, tc-ingress, tc-egress, dev-tx, backlog) and a `DeviceKey` made of
//! its namespace's inode and its ifindex. A [`Registry`] keeps ids stable across rescans.

use std::{os::unix::fs::MetadataExt, path::PathBuf};

use profiler_common::datapath::{DeviceCheckpoints, DeviceKey, DEVICE_CP_BASE, MAX_CHECKPOINTS};
use serde_json::Value;

use super::stages::{DeviceHook, DeviceLabel, DeviceRole};
use crate::cmd::{Cmd, CmdError};

/// The uplink's name when neither `--uplink` nor a default route says otherwise.
pub const DEFAULT_UPLINK: &str = "eno1";
/// The pod-side device in a pod namespace.
pub const POD_DEVICE: &str = "eth0";

/// Errors discovering devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("network namespace {netns} does not exist: check `ip netns list`")]
    NetnsMissing { netns: String },
    #[error("cannot stat {path} to get the namespace's inode")]
    Inode {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list the devices of netns {netns}")]
    List {
        netns: String,
        #[source]
        source: CmdError,
    },
    #[error("cannot parse `ip -j link` output of netns {netns}: {reason}")]
    Parse { netns: String, reason: String },
    #[error(
        "uplink {uplink} is not in netns {netns}: pass the node's uplink with --uplink \
         (list the devices with `ip -n {netns} link`)"
    )]
    NoUplink { uplink: String, netns: String },
}

/// One interface as `ip -j -d link show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifname: String,
    pub ifindex: u32,
    /// `info_kind`: veth, bridge, vxlan, ... (empty for lo and physical NICs).
    pub kind: String,
    pub master: Option<String>,
    /// The Ethernet address, where the device has one of six bytes.
    pub mac: Option<[u8; 6]>,
    /// For a veth, its peer's ifindex (in the peer's namespace).
    pub peer_ifindex: Option<u32>,
}

impl Link {
    /// Whether its frames arrive through the CPU's receive backlog (`netif_rx`): a veth's
    /// do (its peer's transmit queues them there); a bridge's, a VXLAN device's or a NIC's
    /// (NAPI) never do.
    pub fn receives_through_backlog(&self) -> bool {
        self.kind == "veth"
    }
}

/// Parses `ip -j -d link show`.
pub fn parse_links(json: &str, netns: &str) -> Result<Vec<Link>, DeviceError> {
    let bad = |reason: String| DeviceError::Parse {
        netns: netns.to_owned(),
        reason,
    };
    let value: Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let list = value
        .as_array()
        .ok_or_else(|| bad("not a JSON array".into()))?;
    let mut links = Vec::new();
    for item in list {
        let ifname = item["ifname"]
            .as_str()
            .ok_or_else(|| bad("an entry has no ifname".into()))?;
        let ifindex = item["ifindex"]
            .as_u64()
            .ok_or_else(|| bad(format!("{ifname} has no ifindex")))?;
        links.push(Link {
            ifname: ifname.to_owned(),
            ifindex: ifindex as u32,
            kind: item["linkinfo"]["info_kind"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            master: item["master"].as_str().map(str::to_owned),
            mac: item["address"].as_str().and_then(parse_mac),
            peer_ifindex: item["link_index"].as_u64().map(|i| i as u32),
        });
    }
    Ok(links)
}

/// `aa:bb:cc:dd:ee:ff` as six bytes.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The device of the default route in `ip -j route show default` output.
pub fn parse_default_route(json: &str) -> Option<String> {
    let value: Value = serde_json::from_str(json).ok()?;
    value
        .as_array()?
        .iter()
        .find_map(|r| r["dev"].as_str().map(str::to_owned))
}

/// The role of `link` on a node whose uplink is `uplink` (`None`: not watched).
pub fn node_role(link: &Link, uplink: &str) -> Option<DeviceRole> {
    if link.ifname == uplink {
        return Some(DeviceRole::Uplink);
    }
    match link.kind.as_str() {
        "bridge" => Some(DeviceRole::Bridge),
        "vxlan" => Some(DeviceRole::Vxlan),
        "veth" => Some(DeviceRole::HostVeth),
        _ => None,
    }
}

/// The inode of a named namespace (`struct net`'s `ns.inum`).
pub fn netns_inum(netns: &str) -> Result<u32, DeviceError> {
    let path = crate::netns::named_path(netns).map_err(|_| DeviceError::NetnsMissing {
        netns: netns.to_owned(),
    })?;
    match std::fs::metadata(&path) {
        Ok(meta) => Ok(meta.ino() as u32),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(DeviceError::NetnsMissing {
            netns: netns.to_owned(),
        }),
        Err(source) => Err(DeviceError::Inode { path, source }),
    }
}

/// The links of `netns`: one rtnetlink dump ([`super::netlink_links`]), else
/// `ip -n NS -j -d link show`.
pub fn list_links(netns: &str) -> Result<Vec<Link>, DeviceError> {
    match super::netlink_links::list(netns) {
        Ok(links) => return Ok(links),
        Err(err) => log::debug!("rtnetlink link dump in {netns} failed ({err}); asking ip"),
    }
    list_links_with_ip(netns)
}

/// [`list_links`] through `ip -n NS -j -d link show`.
pub fn list_links_with_ip(netns: &str) -> Result<Vec<Link>, DeviceError> {
    let out = Cmd::new("ip")
        .args(["-n", netns, "-j", "-d", "link", "show"])
        .run()
        .map_err(|source| DeviceError::List {
            netns: netns.to_owned(),
            source,
        })?;
    parse_links(&out, netns)
}

/// The uplink of a node: `explicit`, else the default route's device, else `eno1`.
pub fn find_uplink(
    netns: &str,
    explicit: Option<&str>,
    links: &[Link],
) -> Result<String, DeviceError> {
    let uplink = match explicit {
        Some(name) => name.to_owned(),
        None => Cmd::new("ip")
            .args(["-n", netns, "-j", "route", "show", "default"])
            .run()
            .ok()
            .and_then(|out| parse_default_route(&out))
            .filter(|dev| links.iter().any(|l| &l.ifname == dev))
            .unwrap_or_else(|| DEFAULT_UPLINK.to_owned()),
    };
    if links.iter().any(|l| l.ifname == uplink) {
        Ok(uplink)
    } else {
        Err(DeviceError::NoUplink {
            uplink,
            netns: netns.to_owned(),
        })
    }
}

/// A device to watch, before it has checkpoint ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub netns: String,
    pub netns_inum: u32,
    pub link: Link,
    pub role: DeviceRole,
    /// In the node namespace (gets tc programs too).
    pub on_node: bool,
}

/// The watched devices of a node namespace. With `pod_peers` (the host-side ifindexes of the
/// watched pods' `eth0`), only those host veths are watched: other pods' traffic never
/// crosses a followed flow's path, so it should not pay for checkpoints.
pub fn scan_node(
    netns: &str,
    uplink: &str,
    pod_peers: Option<&[u32]>,
) -> Result<Vec<Found>, DeviceError> {
    let inum = netns_inum(netns)?;
    Ok(list_links(netns)?
        .into_iter()
        .filter_map(|link| {
            let role = node_role(&link, uplink)?;
            if role == DeviceRole::HostVeth
                && pod_peers.is_some_and(|peers| !peers.contains(&link.ifindex))
            {
                return None;
            }
            Some(Found {
                netns: netns.to_owned(),
                netns_inum: inum,
                link,
                role,
                on_node: true,
            })
        })
        .collect())
}

/// The pod-side `eth0` of a pod namespace (empty if it has none yet).
pub fn scan_pod(netns: &str) -> Result<Vec<Found>, DeviceError> {
    let inum = netns_inum(netns)?;
    Ok(list_links(netns)?
        .into_iter()
        .filter(|l| l.ifname == POD_DEVICE)
        .map(|link| Found {
            netns: netns.to_owned(),
            netns_inum: inum,
            link,
            role: DeviceRole::PodEth,
            on_node: false,
        })
        .collect())
}

/// A watched device with its checkpoint ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub found: Found,
    /// Its first checkpoint id (dev-rx); the others follow (`DeviceHook::slot`).
    pub base: u16,
}

impl Device {
    pub fn key(&self) -> DeviceKey {
        DeviceKey {
            netns_inum: self.found.netns_inum,
            ifindex: self.found.link.ifindex,
        }
    }

    pub fn id(&self, hook: DeviceHook) -> u16 {
        self.base + hook.slot()
    }

    /// The device's checkpoint ids, every hook with its own (only the attached ones ever
    /// fire).
    pub fn checkpoints(&self) -> DeviceCheckpoints {
        DeviceCheckpoints {
            tp_rx: self.id(DeviceHook::DevRx),
            tc_ingress: self.id(DeviceHook::TcIngress),
            tc_egress: self.id(DeviceHook::TcEgress),
            tp_tx: self.id(DeviceHook::DevTx),
            backlog: self.id(DeviceHook::Backlog),
            _pad: 0,
        }
    }

    /// The name checkpoints carry: the ifname on the node, `NETNS:IFNAME` in a pod.
    pub fn label(&self) -> DeviceLabel {
        DeviceLabel {
            label: if self.found.on_node {
                self.found.link.ifname.clone()
            } else {
                format!("{}:{}", self.found.netns, self.found.link.ifname)
            },
            role: self.found.role,
            master: self.found.link.master.clone(),
        }
    }
}

/// Checkpoint ids a device takes, one per hook.
pub const IDS_PER_DEVICE: u32 = DeviceHook::ALL.len() as u32;

/// Devices with checkpoint ids; ids are never reused, so a hit count always means one device.
#[derive(Debug, Clone)]
pub struct Registry {
    next: u16,
    devices: Vec<Device>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            next: DEVICE_CP_BASE,
            devices: Vec::new(),
        }
    }
}

/// Why a device got no checkpoint ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no checkpoint ids left for {device} in netns {netns}: {max} checkpoints allow {devices} \
     devices; watch fewer pods"
)]
pub struct RegistryFull {
    pub device: String,
    pub netns: String,
    pub max: u32,
    pub devices: usize,
}

impl Registry {
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Registers `found` unless the same (netns, ifindex, ifname) is known; returns the new
    /// device, `Ok(None)` when it was known.
    pub fn add(&mut self, found: Found) -> Result<Option<&Device>, RegistryFull> {
        if self.devices.iter().any(|d| {
            d.found.netns_inum == found.netns_inum
                && d.found.link.ifindex == found.link.ifindex
                && d.found.link.ifname == found.link.ifname
        }) {
            return Ok(None);
        }
        if u32::from(self.next) + IDS_PER_DEVICE > MAX_CHECKPOINTS {
            return Err(RegistryFull {
                device: found.link.ifname.clone(),
                netns: found.netns.clone(),
                max: MAX_CHECKPOINTS,
                devices: self.devices.len(),
            });
        }
        let base = self.next;
        self.next += IDS_PER_DEVICE as u16;
        self.devices.push(Device { found, base });
        Ok(self.devices.last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = include_str!("../../../tests/fixtures/ip/flannel-vxlan-node1-link.json");
    const POD: &str = include_str!("../../../tests/fixtures/ip/flannel-vxlan-pod1-link.json");

    fn found(link: Link, role: DeviceRole, on_node: bool) -> Found {
        Found {
            netns: if on_node { "n1" } else { "p1" }.into(),
            netns_inum: if on_node { 100 } else { 200 },
            link,
            role,
            on_node,
        }
    }

    #[test]
    fn node_devices_get_their_roles() {
        let links = parse_links(NODE, "n1").unwrap();
        let roles: Vec<(String, Option<DeviceRole>)> = links
            .iter()
            .map(|l| (l.ifname.clone(), node_role(l, "eno1")))
            .collect();
        assert_eq!(
            roles,
            vec![
                ("lo".into(), None),
                ("eno1".into(), Some(DeviceRole::Uplink)),
                ("cni0".into(), Some(DeviceRole::Bridge)),
                ("veth-pod".into(), Some(DeviceRole::HostVeth)),
                ("flannel.1".into(), Some(DeviceRole::Vxlan)),
            ]
        );
        let veth = links.iter().find(|l| l.ifname == "veth-pod").unwrap();
        assert_eq!(veth.master.as_deref(), Some("cni0"));
        assert_eq!(veth.kind, "veth");
        let pod = parse_links(POD, "p1").unwrap();
        assert!(pod.iter().any(|l| l.ifname == "eth0" && l.kind == "veth"));
    }

    #[test]
    fn default_route_and_bad_json() {
        assert_eq!(
            parse_default_route(
                r#"[{"dst":"default","gateway":"198.18.0.2","dev":"eno1","flags":[]}]"#
            ),
            Some("eno1".into())
        );
        assert_eq!(parse_default_route("[]"), None);
        assert!(parse_links("{", "x").is_err());
        assert!(parse_links(r#"[{"ifname":"a"}]"#, "x").is_err());
    }

    #[test]
    fn registry_assigns_five_ids_per_device_and_keeps_them() {
        let links = parse_links(NODE, "n1").unwrap();
        let mut reg = Registry::default();
        let eno1 = reg
            .add(found(links[1].clone(), DeviceRole::Uplink, true))
            .unwrap()
            .unwrap()
            .clone();
        assert_eq!(eno1.base, DEVICE_CP_BASE);
        assert_eq!(
            eno1.key(),
            DeviceKey {
                netns_inum: 100,
                ifindex: 2
            }
        );
        let cps = eno1.checkpoints();
        assert_eq!(
            (
                cps.tp_rx,
                cps.tc_ingress,
                cps.tc_egress,
                cps.tp_tx,
                cps.backlog
            ),
            (64, 65, 66, 67, 68)
        );
        assert!(reg
            .add(found(links[1].clone(), DeviceRole::Uplink, true))
            .unwrap()
            .is_none());
        let pod_link = parse_links(POD, "p1")
            .unwrap()
            .into_iter()
            .find(|l| l.ifname == "eth0")
            .unwrap();
        let pod = reg
            .add(found(pod_link, DeviceRole::PodEth, false))
            .unwrap()
            .unwrap()
            .clone();
        assert_eq!(pod.base, DEVICE_CP_BASE + 5);
        let cps = pod.checkpoints();
        assert_eq!(
            (
                cps.tp_rx,
                cps.tc_ingress,
                cps.tc_egress,
                cps.tp_tx,
                cps.backlog
            ),
            (69, 70, 71, 72, 73)
        );
        assert_eq!(pod.label().label, "p1:eth0");
        assert_eq!(eno1.label().label, "eno1");
    }

    #[test]
    fn registry_refuses_past_the_checkpoint_space() {
        let mut reg = Registry::default();
        let room = (MAX_CHECKPOINTS - u32::from(DEVICE_CP_BASE)) / IDS_PER_DEVICE;
        for i in 0..room {
            let link = Link {
                ifname: format!("v{i}"),
                ifindex: i + 10,
                kind: "veth".into(),
                master: None,
                mac: None,
                peer_ifindex: None,
            };
            reg.add(found(link, DeviceRole::HostVeth, true)).unwrap();
        }
        let link = Link {
            ifname: "last".into(),
            ifindex: 9999,
            kind: "veth".into(),
            master: None,
            mac: None,
            peer_ifindex: None,
        };
        let err = reg
            .add(found(link, DeviceRole::HostVeth, true))
            .unwrap_err();
        assert!(err.to_string().contains("watch fewer pods"), "{err}");
        let last = u32::from(reg.devices().last().unwrap().base) + IDS_PER_DEVICE;
        assert!(last <= MAX_CHECKPOINTS && last + IDS_PER_DEVICE > MAX_CHECKPOINTS);
    }

    #[test]
    fn missing_namespace_is_named() {
        let err = netns_inum("netprof-no-such-ns").unwrap_err();
        assert!(matches!(err, DeviceError::NetnsMissing { .. }), "{err}");
    }
}
