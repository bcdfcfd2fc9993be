//! Netfilter programs only netprof's tests load (the netfilter counter), apart from the
//! agent's netfilter object (`nf_main.rs`), which then holds only what the agent attaches.
#![no_std]
#![no_main]

mod nf_counter;

mod object_glue;
