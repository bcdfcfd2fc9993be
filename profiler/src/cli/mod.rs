//! Command-line interface: one module per subcommand.

pub mod agent;
pub mod bench;
pub mod calibrate;
pub mod duty_args;
pub mod k8s;
pub mod lab;
pub mod overhead;
pub mod own_lab;
pub mod report;
pub mod tool_args;

use clap::{Parser, Subcommand};

/// eBPF-assisted datapath profiler for Kubernetes pod networks.
///
/// Runs the standard benchmarks (ping, iperf3, ab against nginx) host to host and pod to pod for
/// each network mode, on a two-node lab built from network namespaces.
#[derive(Debug, Parser)]
#[command(name = "netprof", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build, inspect or remove the two-node namespace lab.
    Lab(lab::LabArgs),
    /// Run ping, iperf3 and ab on the lab for each mode and print the study's table.
    Bench(bench::BenchArgs),
    /// Attach the datapath checkpoints to one node and write per-stage histograms as JSON.
    Agent(agent::AgentArgs),
    /// Measure what the agents cost: ab and iperf3 alternately without and with them.
    Overhead(overhead::OverheadArgs),
    /// Merge a `bench --profile` directory into one attributed report (table, JSON, Markdown, HTML).
    Report(report::ReportArgs),
    /// Run the study on a Kubernetes cluster (`k8s run`), or delete a killed run's pods (`k8s clean`).
    K8s(k8s::K8sArgs),
}
