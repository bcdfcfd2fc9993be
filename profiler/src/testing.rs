//! How a test says it cannot run here. `cargo xtask test` counts a test as skipped (not
//! passed) only when it prints this marker, and lists it by name with the reason.

/// Starts the line a skipping test prints: `NETPROF-SKIP <test>: <reason>`. The runner
/// (`xtask/src/test_run/libtest.rs`) matches it anywhere in a line, since libtest prints the
/// test's `test NAME ... ` header without a newline just before.
pub const SKIP_MARKER: &str = "NETPROF-SKIP";

/// Prints the skip marker for the calling test with `reason`; call it, then return from the
/// test. libtest names each test's thread after the test; `fallback` names it when called
/// from another thread.
pub fn print_skip(fallback: &str, reason: &str) {
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(name) if name != "main" => name,
        _ => fallback,
    };
    // One line: the runner reads the reason up to the end of the line.
    let reason = reason.replace('\n', " ");
    println!("{SKIP_MARKER} {test}: {reason}");
}
