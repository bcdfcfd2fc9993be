//! Which packets belong to a followed benchmark flow: asked only where a path starts, for a
//! packet that is not followed yet (contract: `profiler_common::datapath::FlowKey`).
//!
//! A flow is a protocol, two IPv4 addresses and the server's port. A packet matches when its
//! addresses and one of its ports make a key of `NP_FLOWS` (so both directions match), or,
//! where user space put keys for any peer or any port (`FLOW_ANY_PEER`, `FLOW_ANY_PORT`), when
//! one endpoint or the address pair does. A VXLAN
//! packet (UDP to `Config::vxlan_port`) is judged by the packet inside it. Under sampling only
//! 1 in `2^sample_shift` flows is followed, chosen by the client's port, so a request and its
//! reply are followed together on both nodes.

use profiler_common::datapath::{
    flow_sampled_in, Config, FlowKey, FlowRule, COUNTER_READ_ERRORS, COUNTER_SAMPLED_OUT,
    FLOW_ALWAYS, FLOW_ANY_PEER, FLOW_ANY_PORT, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::checkpoint::{bump, probe_read_counted, Packet, NP_FLOWS};

pub const ETH_HDR_LEN: usize = 14;
const IPV4_MIN_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;
const VXLAN_HDR_LEN: usize = 8;
/// From the outer UDP header to the inner IPv4 header: UDP, VXLAN, inner Ethernet.
const VXLAN_INNER_IP: usize = UDP_HDR_LEN + VXLAN_HDR_LEN + ETH_HDR_LEN;

/// The first 20 bytes of an IPv4 header. Byte arrays only: alignment 1, any content valid, so
/// it may be read from any packet offset.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Head {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub checksum: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

/// The first 4 bytes of a TCP or UDP header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ports {
    pub source: [u8; 2],
    pub dest: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<Ipv4Head>() == IPV4_MIN_HDR_LEN);

/// Reads headers relative to the packet's network (IPv4) header.
pub trait Headers {
    /// The `T` at `offset` bytes past the start of the network header, if it can be read.
    /// `T` is made of bytes only (alignment 1, no invalid values).
    fn read<T: Copy>(&self, offset: usize) -> Option<T>;
}

/// The IPv4 header at `offset` and its header length, when it looks like one.
#[inline(always)]
fn ipv4_at<H: Headers>(headers: &H, offset: usize) -> Option<(Ipv4Head, usize)> {
    let ip: Ipv4Head = headers.read(offset)?;
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < IPV4_MIN_HDR_LEN {
        return None;
    }
    Some((ip, ihl))
}

/// The rule of the flow this (protocol, addresses, ports) belongs to, with the client's port
/// (the one that is not the server's; the higher one where the flow names no port).
#[inline(always)]
fn flow_rule(
    cfg: &Config,
    proto: u8,
    saddr: u32,
    daddr: u32,
    ports: Ports,
) -> Option<(FlowRule, u16)> {
    let lookup = |key: FlowKey| {
        NP_FLOWS.get_ptr(&key).map(|rule| {
            // SAFETY: a value of a live hash map, copied out at once.
            unsafe { *rule }
        })
    };
    let any_peer = cfg.flow_flags & FLOW_ANY_PEER != 0;
    if proto == IPPROTO_ICMP {
        if let Some(rule) = lookup(FlowKey::new(proto, saddr, daddr, 0)) {
            return Some((rule, 0));
        }
        if !any_peer {
            return None;
        }
        let rule = lookup(FlowKey::any_peer(proto, daddr, 0))
            .or_else(|| lookup(FlowKey::any_peer(proto, saddr, 0)));
        return rule.map(|rule| (rule, 0));
    }
    let (sport, dport) = (
        u16::from_be_bytes(ports.source),
        u16::from_be_bytes(ports.dest),
    );
    if let Some(rule) = lookup(FlowKey::new(proto, saddr, daddr, dport)) {
        return Some((rule, sport));
    }
    if let Some(rule) = lookup(FlowKey::new(proto, saddr, daddr, sport)) {
        return Some((rule, dport));
    }
    let any_port = cfg.flow_flags & FLOW_ANY_PORT != 0;
    let higher = if sport > dport { sport } else { dport };
    if any_port {
        if let Some(rule) = lookup(FlowKey::new(proto, saddr, daddr, 0)) {
            return Some((rule, higher));
        }
    }
    if !any_peer {
        return None;
    }
    if let Some(rule) = lookup(FlowKey::any_peer(proto, daddr, dport)) {
        return Some((rule, sport));
    }
    if let Some(rule) = lookup(FlowKey::any_peer(proto, saddr, sport)) {
        return Some((rule, dport));
    }
    if !any_port {
        return None;
    }
    let rule = lookup(FlowKey::any_peer(proto, daddr, 0))
        .or_else(|| lookup(FlowKey::any_peer(proto, saddr, 0)));
    rule.map(|rule| (rule, higher))
}

/// Whether a TCP or UDP packet between these addresses and ports belongs to a followed flow
/// (sampled in or not).
#[inline(always)]
pub fn in_a_flow(cfg: &Config, proto: u8, saddr: u32, daddr: u32, sport: u16, dport: u16) -> bool {
    let ports = Ports {
        source: sport.to_be_bytes(),
        dest: dport.to_be_bytes(),
    };
    flow_rule(cfg, proto, saddr, daddr, ports).is_some()
}

/// Whether the IPv4 packet at `offset` belongs to a followed flow and is sampled in.
#[inline(always)]
fn ip_packet_followed<H: Headers>(
    cfg: &Config,
    headers: &H,
    ip: &Ipv4Head,
    ihl: usize,
    offset: usize,
) -> bool {
    let proto = ip.protocol;
    let ports = match proto {
        IPPROTO_TCP | IPPROTO_UDP => match headers.read::<Ports>(offset + ihl) {
            Some(ports) => ports,
            None => return false,
        },
        IPPROTO_ICMP => Ports {
            source: [0; 2],
            dest: [0; 2],
        },
        _ => return false,
    };
    let (saddr, daddr) = (u32::from_ne_bytes(ip.saddr), u32::from_ne_bytes(ip.daddr));
    let Some((rule, client_port)) = flow_rule(cfg, proto, saddr, daddr, ports) else {
        return false;
    };
    if rule.flags & FLOW_ALWAYS != 0 || flow_sampled_in(proto, client_port, cfg.sample_shift) {
        return true;
    }
    bump(COUNTER_SAMPLED_OUT);
    false
}

/// Whether the packet whose network header `headers` reads belongs to a followed flow:
/// itself, or for VXLAN (`inside_vxlan`) the packet it carries.
#[inline(always)]
pub fn is_followed<H: Headers>(cfg: &Config, headers: &H, inside_vxlan: bool) -> bool {
    let Some((ip, ihl)) = ipv4_at(headers, 0) else {
        return false;
    };
    if inside_vxlan && cfg.vxlan_port != 0 && ip.protocol == IPPROTO_UDP {
        if let Some(udp) = headers.read::<Ports>(ihl) {
            if u16::from_be_bytes(udp.dest) == cfg.vxlan_port {
                let inner = ihl + VXLAN_INNER_IP;
                return match ipv4_at(headers, inner) {
                    Some((inner_ip, inner_ihl)) => {
                        ip_packet_followed(cfg, headers, &inner_ip, inner_ihl, inner)
                    }
                    None => false,
                };
            }
        }
    }
    ip_packet_followed(cfg, headers, &ip, ihl, 0)
}

/// Headers of a plain packet (no look inside VXLAN).
pub struct Plain<H>(pub H);

impl<H: Headers> Packet for Plain<H> {
    #[inline(always)]
    fn is_followed(&self, cfg: &Config) -> bool {
        is_followed(cfg, &self.0, false)
    }
}

/// Headers of a packet that may be VXLAN (judged by the packet inside).
pub struct MaybeVxlan<H>(pub H);

impl<H: Headers> Packet for MaybeVxlan<H> {
    #[inline(always)]
    fn is_followed(&self, cfg: &Config) -> bool {
        is_followed(cfg, &self.0, true)
    }
}

/// Headers of a `struct sk_buff` read with `bpf_probe_read_kernel` from
/// `skb->head + skb->network_header` (offsets from `NP_CONFIG`).
pub struct SkbHeaders {
    network: u64,
}

impl SkbHeaders {
    /// Locates the network header of `skb`; `None` (read error counted) if the offsets are
    /// unknown or the reads fail.
    #[inline(always)]
    pub fn new(cfg: &Config, skb: u64) -> Option<Self> {
        if cfg.skb_head == 0 || cfg.skb_network_header == 0 {
            bump(COUNTER_READ_ERRORS);
            return None;
        }
        let head: u64 = probe_read_counted(skb + u64::from(cfg.skb_head))?;
        let network_header: u16 = probe_read_counted(skb + u64::from(cfg.skb_network_header))?;
        // An unset `network_header` (0xffff) shows no IPv4 header, so nothing is admitted.
        if head == 0 || network_header == u16::MAX {
            return None;
        }
        Some(Self {
            network: head + u64::from(network_header),
        })
    }
}

impl Headers for SkbHeaders {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        probe_read_counted(self.network + offset as u64)
    }
}

/// A `struct sk_buff` at a kernel address, its headers read with `bpf_probe_read_kernel`.
pub struct Skb(pub u64);

impl Packet for Skb {
    #[inline(always)]
    fn is_followed(&self, cfg: &Config) -> bool {
        match SkbHeaders::new(cfg, self.0) {
            Some(headers) => is_followed(cfg, &headers, false),
            None => false,
        }
    }
}
