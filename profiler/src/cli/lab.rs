//! `netprof lab up|down|status`.

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::lab::{self, names::DEFAULT_LAB, LabLock, LabNames, LabSpec, Mode};

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub action: LabAction,
}

#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Build the lab for one mode (removing leftovers of an earlier or crashed run first).
    Up {
        /// host, flannel-hostgw, flannel-vxlan, calico or l2.
        #[arg(long, short)]
        mode: Mode,
        /// Extra kube-proxy Services (5 iptables rules each) besides nginx's.
        #[arg(long, default_value_t = 0)]
        services: u32,
        /// Lab name; namespaces are called netprof-<lab>-node1/2 and -pod1/2.
        #[arg(long, default_value = DEFAULT_LAB)]
        lab: String,
        /// Print the commands that would build the lab, and build nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove the lab: its namespaces, links, routes, rules and processes.
    Down {
        #[arg(long, default_value = DEFAULT_LAB)]
        lab: String,
    },
    /// List labs present on this machine.
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: LabArgs) -> Result<()> {
    match args.action {
        LabAction::Up {
            mode,
            services,
            lab,
            dry_run,
        } => {
            let names = LabNames::new(&lab)?;
            let spec = LabSpec { mode, services };
            if dry_run {
                for cmd in lab::topology::build_plan(&names, mode, services) {
                    println!("{}", cmd.display());
                }
                return Ok(());
            }
            lab::require_root()?;
            let _lock = LabLock::acquire(&lab)?;
            let built = lab::up(&names, spec)?;
            println!(
                "lab '{lab}' is up in mode {mode}: {}",
                built.namespaces().join(", ")
            );
            let host = built.host_path();
            println!("  host path: {} -> {}", host.client_netns, host.server_ip);
            if let Some(pod) = built.pod_path() {
                println!(
                    "  pod path:  {} -> {} (HTTP via {})",
                    pod.client_netns, pod.server_ip, pod.http_target
                );
            }
            Ok(())
        }
        LabAction::Down { lab } => {
            let names = LabNames::new(&lab)?;
            lab::require_root()?;
            let _lock = LabLock::acquire(&lab)?;
            let report = lab::down(&names)?;
            if report.namespaces.is_empty() {
                println!("lab '{lab}' was not up; nothing to remove");
            } else {
                println!(
                    "lab '{lab}' removed: {} (stopped {} processes)",
                    report.namespaces.join(", "),
                    report.processes_killed
                );
            }
            Ok(())
        }
        LabAction::Status { json } => {
            let labs = lab::status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&labs)?);
            } else if labs.is_empty() {
                println!("no netprof lab is up");
            } else {
                for entry in labs {
                    let mode = entry
                        .spec
                        .map_or("unknown (no state file)".to_owned(), |s| {
                            format!("{} (+{} services)", s.mode, s.services)
                        });
                    let health = if entry.complete {
                        "complete"
                    } else {
                        "INCOMPLETE: run `netprof lab down` or `lab up` again"
                    };
                    println!(
                        "{}: {mode}, {health}: {}",
                        entry.lab,
                        entry.namespaces.join(" ")
                    );
                }
            }
            Ok(())
        }
    }
}
