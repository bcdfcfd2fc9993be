//! Types and constants shared by the kernel programs (`profiler-ebpf`) and user space.
//!
//! Every type here is `#[repr(C)]` with explicit padding so both sides agree on the layout.
#![no_std]
