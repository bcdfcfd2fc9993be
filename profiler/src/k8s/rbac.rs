//! The Kubernetes API permissions netprof needs, in one place.
//!
//! `netprof k8s run` must use only these (apiGroup, resource, verbs); `deploy/rbac.yaml` grants
//! exactly them to the `netprof-orchestrator` ServiceAccount, and `tests/manifests.rs` fails if
//! the YAML grants more or less. A new API call in the orchestrator means a new entry here,
//! which the test then demands in the YAML too. The agent needs none: it calls no API.

/// The namespace everything of netprof lives in (`deploy/namespace.yaml`).
pub const NAMESPACE: &str = "netprof";

/// `(apiGroup, resource, verbs)`, verbs sorted. `""` is the core group.
pub const REQUIRED_RULES: &[(&str, &str, &[&str])] = &[
    // Benchmark pods: create pinned to a node, list + watch until Ready (also list the agent
    // pods, by label, and the run's pods to delete them), delete at the end. No `get`: the
    // watch carries every state the run needs.
    ("", "pods", &["create", "delete", "list", "watch"]),
    // ping/iperf3/ab in the client pods. kube opens exec over WebSocket (an HTTP GET): API
    // servers before 1.35 authorize it as `get`, later ones also check `create`.
    ("", "pods/exec", &["create", "get"]),
    // The agents' control API through port-forward (WebSocket too, hence both verbs).
    ("", "pods/portforward", &["create", "get"]),
    // Choosing the two nodes (`--nodes A,B` or the study's `workern` labels): one list gives
    // their names, labels, addresses and readiness; no `get`.
    ("", "nodes", &["list"]),
];

/// Resources of [`REQUIRED_RULES`] that are cluster-scoped (granted by a ClusterRole); all
/// others are granted by a Role in [`NAMESPACE`] only.
pub const CLUSTER_SCOPED: &[&str] = &["nodes"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_unique_sorted_and_read_only_on_nodes() {
        for (i, (group, resource, verbs)) in REQUIRED_RULES.iter().enumerate() {
            assert!(
                verbs.windows(2).all(|w| w[0] < w[1]),
                "{resource}: verbs sorted, no duplicates"
            );
            assert!(
                !verbs.contains(&"*") && *group != "*" && *resource != "*",
                "no wildcards"
            );
            assert!(
                REQUIRED_RULES[..i]
                    .iter()
                    .all(|(g, r, _)| (g, r) != (group, resource)),
                "{resource} listed twice"
            );
        }
        for resource in CLUSTER_SCOPED {
            let (_, _, verbs) = REQUIRED_RULES
                .iter()
                .find(|(_, r, _)| r == resource)
                .unwrap();
            assert!(
                verbs.iter().all(|v| ["get", "list", "watch"].contains(v)),
                "{resource}: read only"
            );
        }
    }
}
