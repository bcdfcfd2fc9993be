//! Builds the kernel programs in `profiler-ebpf` for bpfel-unknown-none with aya-build (nightly,
//! build-std=core, bpf-linker), so `netprof` can embed the object with `include_bytes_aligned!`.
//! `cargo xtask setup` installs what this needs.

fn main() -> anyhow::Result<()> {
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let ebpf_dir = format!("{manifest_dir}/../profiler-ebpf");
    // Shared types change the kernel object too.
    println!("cargo:rerun-if-changed={manifest_dir}/../profiler-common/src");
    let package = aya_build::Package {
        name: "profiler-ebpf",
        root_dir: &ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
