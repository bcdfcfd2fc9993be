//! netprof: benchmarks pod networks and attributes their cost to datapath stages.

pub mod agent;
pub mod api;
pub mod bench;
pub mod cli;
pub mod cmd;
pub mod ebpf;
pub mod k8s;
pub mod lab;
pub mod netns;
pub mod parse;
pub mod report;
pub mod rundir;
pub mod testing;
