//! Kernel programs only netprof's tests load (the uplink counter), in an object of their own
//! so the agent's object (`main.rs`) neither carries them nor makes aya create their map.
#![no_std]
#![no_main]

mod uplink_counter;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot panic; this is never reached.
    loop {}
}

/// The program license, as in `main.rs`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
