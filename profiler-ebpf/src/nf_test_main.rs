//! Netfilter programs only netprof's tests load (the netfilter counter), apart from the
//! agent's netfilter object (`nf_main.rs`), which then holds only what the agent attaches.
#![no_std]
#![no_main]

mod nf_counter;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot panic; this is never reached.
    loop {}
}

/// The program license: netprof's netfilter loader refuses an object without one.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
