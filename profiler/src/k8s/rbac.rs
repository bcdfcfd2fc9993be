//! Where netprof lives on a cluster, and the Kubernetes API permissions it needs, in one place.
//!
//! Two namespaces, so that the orchestrator's rights do not add up to root on every node:
//! - the agents' ([`AGENT_NAMESPACE`]): privileged DaemonSet pods. The orchestrator may only
//!   list pods there, port-forward to them and read the agents' token Secret; it cannot create
//!   or exec into anything, so it cannot borrow the agents' privileges;
//! - the benchmark's ([`BENCH_NAMESPACE`]): the run's pods, which the orchestrator creates,
//!   execs into and deletes. Not labelled privileged for Pod Security; deploy/'s
//!   ValidatingAdmissionPolicy refuses privileged containers, added capabilities, host paths
//!   and host PID/IPC there, which is what the hostNetwork twins leave room for.
//!
//! `netprof k8s run` must use only [`REQUIRED_RULES`]; `deploy/rbac.yaml` grants exactly them to
//! the `netprof-orchestrator` ServiceAccount, and `tests/manifests.rs` fails if the YAML grants
//! more or less. A new API call means a new entry here, which the test then demands in the YAML.
//! The agent needs none: it calls no API.

use std::fmt;

/// The benchmark pods' namespace (`deploy/namespace.yaml`; `--namespace`).
pub const BENCH_NAMESPACE: &str = "netprof";
/// The agents' namespace (`deploy/namespace.yaml`; `--agent-namespace`).
pub const AGENT_NAMESPACE: &str = "netprof-system";
/// The Secret holding the agents' API token (`token`), in the agents' namespace.
pub const AGENT_TOKEN_SECRET: &str = "netprof-agent-token";
pub const AGENT_TOKEN_KEY: &str = "token";

/// Which Role (or the ClusterRole) grants a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The Role in the benchmark namespace.
    Bench,
    /// The Role in the agents' namespace.
    Agents,
    /// The ClusterRole.
    Cluster,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Bench => "the benchmark namespace",
            Scope::Agents => "the agents' namespace",
            Scope::Cluster => "the cluster",
        })
    }
}

/// One RBAC rule: (scope, apiGroup, resource, verbs sorted, resourceNames or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub scope: Scope,
    /// `""` is the core group.
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// Restricts the rule to these objects (empty: every object of the resource).
    pub names: &'static [&'static str],
}

pub const REQUIRED_RULES: &[Rule] = &[
    // Benchmark pods: create pinned to a node (also server-side dry runs, to ask admission
    // first: `k8s doctor`), list + watch until Ready (and the run's pods, to delete them or to
    // find a killed run's), delete at the end. No `get`: the watch carries every state.
    Rule {
        scope: Scope::Bench,
        group: "",
        resource: "pods",
        verbs: &["create", "delete", "list", "watch"],
        names: &[],
    },
    // ping/iperf3/ab in the client pods. kube opens exec over WebSocket (an HTTP GET): API
    // servers before 1.35 authorize it as `get`, later ones also check `create`.
    Rule {
        scope: Scope::Bench,
        group: "",
        resource: "pods/exec",
        verbs: &["create", "get"],
        names: &[],
    },
    // `k8s doctor`: NetworkPolicies that select the benchmark pods.
    Rule {
        scope: Scope::Bench,
        group: "networking.k8s.io",
        resource: "networkpolicies",
        verbs: &["list"],
        names: &[],
    },
    // The agent pods, by label and node.
    Rule {
        scope: Scope::Agents,
        group: "",
        resource: "pods",
        verbs: &["list"],
        names: &[],
    },
    // The agents' control API through port-forward (WebSocket too, hence both verbs).
    Rule {
        scope: Scope::Agents,
        group: "",
        resource: "pods/portforward",
        verbs: &["create", "get"],
        names: &[],
    },
    // The agents' API token, and only that Secret.
    Rule {
        scope: Scope::Agents,
        group: "",
        resource: "secrets",
        verbs: &["get"],
        names: &[AGENT_TOKEN_SECRET],
    },
    // Choosing the two nodes (`--nodes A,B` or the study's `workern` labels): one list gives
    // their names, labels, addresses, taints and readiness; no `get`.
    Rule {
        scope: Scope::Cluster,
        group: "",
        resource: "nodes",
        verbs: &["list"],
        names: &[],
    },
];

/// The namespaces of a run (flags; the defaults are deploy/'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    pub bench: String,
    pub agents: String,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self {
            bench: BENCH_NAMESPACE.to_owned(),
            agents: AGENT_NAMESPACE.to_owned(),
        }
    }
}

impl Namespaces {
    /// Which scope a namespace is (`None`: the cluster).
    pub fn scope_of(&self, namespace: Option<&str>) -> Scope {
        match namespace {
            None => Scope::Cluster,
            Some(ns) if ns == self.agents => Scope::Agents,
            Some(_) => Scope::Bench,
        }
    }

    /// Checks the flags: DNS labels, and two different namespaces (the split is the point).
    pub fn validate(&self) -> Result<(), String> {
        for (flag, ns) in [
            ("--namespace", &self.bench),
            ("--agent-namespace", &self.agents),
        ] {
            if !is_dns_label(ns) {
                return Err(format!(
                    "{flag} {ns:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"
                ));
            }
        }
        if self.bench == self.agents {
            return Err(format!(
                "--namespace and --agent-namespace are both {:?}: the benchmark pods and the privileged agents \
                 live apart, so that creating benchmark pods never grants the agents' privileges",
                self.bench
            ));
        }
        Ok(())
    }
}

/// An RFC 1123 label, as namespace names are.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_unique_sorted_and_narrow() {
        for (i, rule) in REQUIRED_RULES.iter().enumerate() {
            assert!(
                rule.verbs.windows(2).all(|w| w[0] < w[1]),
                "{}: verbs sorted, no duplicates",
                rule.resource
            );
            assert!(
                !rule.verbs.contains(&"*") && rule.group != "*" && rule.resource != "*",
                "no wildcards"
            );
            assert!(
                REQUIRED_RULES[..i]
                    .iter()
                    .all(|r| (r.scope, r.group, r.resource)
                        != (rule.scope, rule.group, rule.resource)),
                "{} listed twice",
                rule.resource
            );
            if rule.scope == Scope::Cluster {
                assert!(
                    rule.verbs
                        .iter()
                        .all(|v| ["get", "list", "watch"].contains(v)),
                    "{}: read only",
                    rule.resource
                );
            }
            if rule.resource == "secrets" {
                assert!(!rule.names.is_empty(), "secrets only by name");
            }
        }
        // The orchestrator can create or exec only in the benchmark namespace.
        for rule in REQUIRED_RULES.iter().filter(|r| r.scope != Scope::Bench) {
            assert!(
                rule.resource != "pods/exec"
                    && !(rule.resource == "pods" && rule.verbs.contains(&"create")),
                "{rule:?}"
            );
        }
    }

    #[test]
    fn namespaces_must_be_names_and_apart() {
        assert_eq!(Namespaces::default().validate(), Ok(()));
        let same = Namespaces {
            bench: "x".into(),
            agents: "x".into(),
        };
        assert!(same.validate().unwrap_err().contains("live apart"));
        let bad = Namespaces {
            bench: "Bench".into(),
            ..Namespaces::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .starts_with("--namespace \"Bench\""));
        assert_eq!(
            Namespaces::default().scope_of(Some("netprof-system")),
            Scope::Agents
        );
        assert_eq!(
            Namespaces::default().scope_of(Some("netprof")),
            Scope::Bench
        );
        assert_eq!(Namespaces::default().scope_of(None), Scope::Cluster);
    }
}
