//! Kubernetes: what `netprof k8s run` (the orchestrator, not written yet) may do on a cluster.
//! The manifests are in `deploy/`; `tests/manifests.rs` checks them against this module.

pub mod rbac;
