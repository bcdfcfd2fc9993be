//! netprof's developer tasks. `cargo xtask setup` prepares a fresh machine, `cargo xtask demo`
//! runs the main job (all modes on the namespace lab), `cargo xtask test` runs every test.

mod demo;
mod image;
mod run;
mod setup;
mod test_run;
mod vm;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (Debian packages, nightly rust-src, bpf-linker) and
    /// mount bpffs/tracefs. Idempotent; fast when everything is present.
    Setup,
    /// Setup, release build, `netprof bench --modes all --profile` (its clean twins, which no
    /// agent attaches to, write <out>/clean), the calibration, then `netprof report` as a table
    /// and as <out>/report.html. `--repeat K` runs the pass K times (<out>/repeat-K); `--out`
    /// must be new or empty (default: a fresh netprof-out/demo-<time>); other args go to bench.
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        bench_args: Vec<String>,
    },
    /// Setup, release build, then `netprof overhead` (ab and iperf3 on flannel-vxlan without and
    /// with the agents, alternating; extra args go to overhead).
    Overhead {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        overhead_args: Vec<String>,
    },
    /// Build the netprof image (deploy/Dockerfile), push it, and set it in
    /// deploy/kustomization.yaml: step 0 of running netprof on a cluster.
    Image {
        /// Where to push it, with a fixed tag: REGISTRY/netprof:TAG.
        reference: String,
        /// The container engine.
        #[arg(long, default_value = "docker")]
        engine: String,
        /// Build and set the image, but do not push it (the nodes can pull it by themselves).
        #[arg(long)]
        no_push: bool,
    },
    /// Setup, rustfmt and clippy checks, build, then every test binary (serially: they share
    /// the kernel), counted test by test; the summary names skipped and failed tests.
    Test {
        /// `[CARGO_TEST_OPTIONS] [TESTNAME] [-- TEST_BINARY_ARGS]`, e.g. `--test agent_lab
        /// flannel` or `-p netprof --lib -- --exact lab::lock::tests::x`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Setup, build, then the kernel matrix alone: boots Debian's 6.1 and 6.12 cloud kernels
    /// under qemu, runs the lab and the agents in each, and checks the results
    /// (`tests/vm_matrix.rs`).
    Vm {
        /// Which pinned kernels: all, or ids such as 6.1,6.12.
        #[arg(long, default_value = "all")]
        kernels: String,
        /// Results directory (default target/vm-matrix).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run this netprof binary instead of building one.
        #[arg(long)]
        netprof: Option<PathBuf>,
    },
    /// Inside the matrix's VM: run the scenarios and write the results (not for the host).
    #[command(hide = true)]
    VmGuest {
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Demo { bench_args } => {
            setup::run()?;
            demo::demo(&bench_args)
        }
        Task::Overhead { overhead_args } => {
            setup::run()?;
            run::overhead(&overhead_args)
        }
        Task::Image {
            reference,
            engine,
            no_push,
        } => image::image(&reference, &engine, !no_push),
        Task::Test { cargo_args } => {
            setup::run()?;
            test_run::test(&cargo_args)
        }
        Task::Vm {
            kernels,
            out,
            netprof,
        } => {
            setup::run()?;
            vm::task(&kernels, &out.unwrap_or_else(vm::default_out), netprof)
        }
        Task::VmGuest { out } => vm::guest::run(&out),
    }
}
