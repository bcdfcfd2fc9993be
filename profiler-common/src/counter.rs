//! The uplink packet counter: a tc classifier on each direction of one interface sorts every
//! packet into exactly one slot of a per-CPU array of `u64` packet counts. Only tests load it,
//! from an object of their own (`profiler-test`), not the agent's.
//!
//! Slot layout: `slot = direction * CLASS_COUNT + class`, so user space can read one direction
//! as a contiguous range. The value type is a plain `u64` (aya already implements `Pod` for it),
//! so there is no struct, and no padding, to describe here.

/// Name of the `BPF_MAP_TYPE_PERCPU_ARRAY` holding the counts (value `u64`, key = slot index).
/// Kernel names are cut at 15 bytes; this one fits, so `bpftool map` shows it whole.
pub const MAP_NAME: &str = "UPLINK_COUNTS";

/// Name of the classifier attached to the ingress hook.
pub const PROG_INGRESS: &str = "count_ingress";
/// Name of the classifier attached to the egress hook.
pub const PROG_EGRESS: &str = "count_egress";

/// Packet direction as seen from the interface the counter is attached to.
pub const DIRECTION_INGRESS: u32 = 0;
/// See [`DIRECTION_INGRESS`].
pub const DIRECTION_EGRESS: u32 = 1;
/// Number of directions.
pub const DIRECTION_COUNT: u32 = 2;

/// IPv4 ICMP echo request (type 8), first fragment or unfragmented.
pub const CLASS_ECHO_REQUEST: u32 = 0;
/// IPv4 ICMP echo reply (type 0), first fragment or unfragmented.
pub const CLASS_ECHO_REPLY: u32 = 1;
/// Any other IPv4 packet: other protocols, other ICMP types, non-first fragments, and IPv4
/// packets whose headers are truncated or malformed.
pub const CLASS_OTHER_IPV4: u32 = 2;
/// Everything that is not IPv4 by EtherType (ARP, IPv6, in-band VLAN tags, ...), and frames
/// shorter than an Ethernet header.
pub const CLASS_NON_IPV4: u32 = 3;
/// Number of classes per direction.
pub const CLASS_COUNT: u32 = 4;

/// Number of slots; the map's `max_entries`.
pub const SLOT_COUNT: u32 = DIRECTION_COUNT * CLASS_COUNT;

/// Slot index of `class` in `direction`.
#[inline(always)]
pub const fn slot(direction: u32, class: u32) -> u32 {
    direction * CLASS_COUNT + class
}

pub const INGRESS_ECHO_REQUEST: u32 = slot(DIRECTION_INGRESS, CLASS_ECHO_REQUEST);
pub const INGRESS_ECHO_REPLY: u32 = slot(DIRECTION_INGRESS, CLASS_ECHO_REPLY);
pub const INGRESS_OTHER_IPV4: u32 = slot(DIRECTION_INGRESS, CLASS_OTHER_IPV4);
pub const INGRESS_NON_IPV4: u32 = slot(DIRECTION_INGRESS, CLASS_NON_IPV4);
pub const EGRESS_ECHO_REQUEST: u32 = slot(DIRECTION_EGRESS, CLASS_ECHO_REQUEST);
pub const EGRESS_ECHO_REPLY: u32 = slot(DIRECTION_EGRESS, CLASS_ECHO_REPLY);
pub const EGRESS_OTHER_IPV4: u32 = slot(DIRECTION_EGRESS, CLASS_OTHER_IPV4);
pub const EGRESS_NON_IPV4: u32 = slot(DIRECTION_EGRESS, CLASS_NON_IPV4);

// The layout is dense and every slot index is in range.
const _: () = assert!(EGRESS_NON_IPV4 == SLOT_COUNT - 1);
const _: () = assert!(CLASS_NON_IPV4 == CLASS_COUNT - 1);
const _: () = assert!(MAP_NAME.len() <= 15);
const _: () = assert!(PROG_INGRESS.len() <= 15 && PROG_EGRESS.len() <= 15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_distinct_and_dense() {
        let all = [
            INGRESS_ECHO_REQUEST,
            INGRESS_ECHO_REPLY,
            INGRESS_OTHER_IPV4,
            INGRESS_NON_IPV4,
            EGRESS_ECHO_REQUEST,
            EGRESS_ECHO_REPLY,
            EGRESS_OTHER_IPV4,
            EGRESS_NON_IPV4,
        ];
        let mut seen = [false; SLOT_COUNT as usize];
        for s in all {
            assert!(!seen[s as usize], "slot {s} used twice");
            seen[s as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
