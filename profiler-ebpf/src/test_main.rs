//! Kernel programs only netprof's tests load (the uplink counter), in an object of their own
//! so the agent's object (`main.rs`) neither carries them nor makes aya create their map.
#![no_std]
#![no_main]

mod uplink_counter;

mod object_glue;
