//! Kubernetes: `netprof k8s run` runs the study's benchmarks on a real cluster with the kube
//! crate, and `netprof k8s clean` removes what a killed run left.
//!
//! A run: [`client`] connects (kubeconfig or in-cluster), [`doctor`] checks the cluster first
//! ([`nodes`] picks the client and server nodes, [`agents`] checks the agent DaemonSet's pods on
//! both, admission answers a dry run, and with the pods up [`reach`] checks ICMP and TCP),
//! [`pods`] builds the benchmark pods (pod and hostNetwork twins), [`ready`] waits for them,
//! [`tools`] runs ping, iperf3 and ab through [`exec`], [`profile`] starts and stops the agents
//! around each step over [`forward`] (HTTP through the port-forward API), [`run`] writes
//! `<out>/<mode>.json` as the lab does, and [`cleanup`] deletes everything carrying the run's
//! label, also after a failure or a signal. The manifests are in `deploy/`; `tests/manifests.rs`
//! checks them against [`rbac`], and `tests/k8s_run.rs` drives all of this against an
//! in-process fake API server.

// Errors here end a run (one per run), so carrying their context inline costs nothing.
#![allow(clippy::result_large_err)]

pub mod agents;
pub mod cleanup;
pub mod client;
pub mod doctor;
pub mod error;
pub mod exec;
pub mod forward;
pub mod nodes;
pub mod pods;
pub mod profile;
pub mod progress;
pub mod rbac;
pub mod reach;
pub mod ready;
pub mod run;
pub mod tools;

pub use error::K8sError;

/// Every object a run creates carries `netprof.io/run=<run id>`; `k8s clean` selects on it.
pub const RUN_LABEL: &str = "netprof.io/run";
/// ... and `app.kubernetes.io/part-of=netprof`, as everything in `deploy/`.
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
pub const PART_OF: &str = "netprof";
/// `app.kubernetes.io/name`: `netprof-bench` for benchmark pods, `netprof-agent` for the
/// DaemonSet's pods (deploy/daemonset.yaml).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const BENCH_APP: &str = "netprof-bench";
pub const AGENT_APP: &str = "netprof-agent";
/// `nginx`, `iperf3` or `client`.
pub const ROLE_LABEL: &str = "netprof.io/role";
/// `pod` or `host` (hostNetwork).
pub const PATH_LABEL: &str = "netprof.io/path";
/// The agent's control API port on the node's loopback (deploy/daemonset.yaml).
pub const AGENT_PORT: u16 = 9476;

/// The netprof image (client tools, iperf3, the agent), tagged with this version as in deploy/.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/netprof/netprof:", env!("CARGO_PKG_VERSION"));
/// The nginx image of deploy/bench-pods.yaml.
pub const DEFAULT_NGINX_IMAGE: &str = "docker.io/library/nginx:1.27-bookworm";
/// The ConfigMap with nginx's one-worker configuration and the 612-byte page, applied with
/// deploy/ (bench-nginx.yaml); the nginx pods mount it.
pub const NGINX_CONFIGMAP: &str = "netprof-bench-nginx";

/// A fresh run id: 8 hex digits from the clock and the process id, short enough that pod
/// names stay readable (`netprof-<id>-iperf3-host`) and unique enough for runs on one cluster.
pub fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = nanos ^ (u64::from(std::process::id()) << 20);
    format!("{:08x}", (mixed ^ (mixed >> 32)) as u32)
}

/// Whether `id` is a valid run label value as `new_run_id` makes them (for `k8s clean --run`).
pub fn is_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_label_values() {
        let id = new_run_id();
        assert_eq!(id.len(), 8);
        assert!(is_run_id(&id), "{id}");
        assert!(
            !is_run_id("")
                && !is_run_id("a b")
                && !is_run_id("Run1")
                && !is_run_id(&"a".repeat(64))
        );
    }

    #[test]
    fn agent_port_is_the_api_default() {
        assert!(crate::api::DEFAULT_LISTEN.ends_with(&format!(":{AGENT_PORT}")));
    }
}
