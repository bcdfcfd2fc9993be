//! netprof's kernel programs. Each program lives in its own module; this file only wires them.
#![no_std]
#![no_main]

// Shared with the netfilter object: not every step is used by the programs aya loads.
#[allow(dead_code)]
mod checkpoint;
mod checkpoint_programs;
mod flows;
mod nf_fentry;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot panic; this is never reached.
    loop {}
}

/// The program license the kernel checks for GPL-only helpers (`bpf_probe_read_kernel`). aya
/// assumes GPL when the section is missing; netprof's own tracing loader reads it from here.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
