//! What every kernel object of this crate needs besides its programs: a panic handler for
//! `no_std`, and the license section.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot panic; this is never reached.
    loop {}
}

/// The program license the kernel checks for GPL-only helpers (`bpf_probe_read_kernel`). aya
/// assumes GPL when the section is missing; netprof's own loaders read it from here, as libbpf
/// does.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
