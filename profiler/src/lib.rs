//! netprof: benchmarks pod networks and attributes their cost to datapath stages.

pub mod cmd;
pub mod bench;
pub mod lab;
pub mod cli;
pub mod parse;
