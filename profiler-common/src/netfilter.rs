//! The netfilter packet counter: a `BPF_PROG_TYPE_NETFILTER` program that counts every IPv4
//! packet passing the netfilter hook it is attached to, in a per-CPU array of `u64`.
//!
//! Only tests load it, so it lives in a test object (`profiler-nf-test`), apart from the
//! agent's netfilter programs (`profiler-nf`); both are netfilter objects, which aya 0.14
//! rejects, so netprof loads them with its own small loader (`netprof::ebpf::netfilter`).

/// Name of the `BPF_MAP_TYPE_PERCPU_ARRAY` holding the count (key 0, value `u64`).
pub const MAP_NAME: &str = "NF_COUNTS";

/// Name of the netfilter program.
pub const PROG_COUNT: &str = "nf_count";

/// Slot of the packet count.
pub const SLOT_PACKETS: u32 = 0;

/// Number of slots; the map's `max_entries`.
pub const SLOT_COUNT: u32 = 1;

/// ELF section the netfilter programs live in (what libbpf calls `SEC("netfilter")`).
pub const SECTION: &str = "netfilter";

const _: () = assert!(MAP_NAME.len() <= 15);
const _: () = assert!(PROG_COUNT.len() <= 15);
const _: () = assert!(SLOT_PACKETS < SLOT_COUNT);
