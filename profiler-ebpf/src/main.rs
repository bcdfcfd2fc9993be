//! netprof's kernel programs. Each program lives in its own module; this file only wires them.
#![no_std]
#![no_main]

// Shared with the netfilter object: not every step is used by the programs aya loads.
#[allow(dead_code)]
mod checkpoint;
mod checkpoint_programs;
mod flows;
mod nf_fentry;

mod object_glue;
