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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot panic; this is never reached.
    loop {}
}

/// The program license the kernel checks for GPL-only helpers (read by netprof's netfilter
/// loader from the `license` section, as libbpf does).
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
