//! netprof: benchmarks pod networks and attributes their cost to datapath stages.

pub mod ebpf;
pub mod netns;
