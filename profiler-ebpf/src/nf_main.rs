//! netprof's netfilter programs (`BPF_PROG_TYPE_NETFILTER`), in an object of their own:
//! aya 0.14 rejects a whole object when it contains a `netfilter` section, so these must not
//! share one with the programs aya loads (`main.rs`). `netprof::ebpf::netfilter` loads them.
#![no_std]
#![no_main]

// Shared with the aya object: not every step is used by the netfilter programs.
#[allow(dead_code)]
mod checkpoint;
#[allow(dead_code)]
mod flows;
mod nf_checkpoints;

mod object_glue;
