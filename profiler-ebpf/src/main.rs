//! netprof's kernel programs. Each program lives in its own module; this file only wires them.
#![no_std]
#![no_main]

mod checkpoint;
mod checkpoint_programs;
mod nf_fentry;
mod uplink_counter;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves the programs cannot panic; this is never reached.
    loop {}
}
