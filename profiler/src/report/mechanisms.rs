//! Which kernel each node ran and which mechanism measured each stage there. A kernel without
//! TCX measures the device stages through clsact filters, one without netfilter links the
//! netfilter stages through fentry/fexit on the table walkers (whose nat chains run only for a
//! connection's first packet), so the same stage name can stand for different probes: the
//! report says which.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::agent::report::{AgentReport, Via};

/// One node (or several with the same kernel and mechanisms) and how its stages were measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeMechanisms {
    pub nodes: Vec<String>,
    pub kernel: String,
    /// Stage -> the mechanisms of the checkpoints its segments run between.
    pub stages: BTreeMap<String, BTreeSet<Via>>,
}

/// Gathers the agents' documents by node. Documents that do not name their mechanisms (from
/// before they did) add nothing.
pub fn collect<'a>(docs: impl IntoIterator<Item = &'a AgentReport>) -> Vec<NodeMechanisms> {
    let mut per_node: BTreeMap<(String, String), BTreeMap<String, BTreeSet<Via>>> = BTreeMap::new();
    for doc in docs {
        let via: BTreeMap<u16, Via> = doc
            .checkpoints
            .iter()
            .filter_map(|c| c.via.map(|v| (c.id, v)))
            .collect();
        if via.is_empty() {
            continue;
        }
        let stages = per_node
            .entry((doc.node.clone(), doc.kernel.clone()))
            .or_default();
        for segment in &doc.segments {
            let ends = [segment.from, segment.to].map(|id| via.get(&id).copied());
            stages
                .entry(segment.stage.name().to_owned())
                .or_default()
                .extend(ends.into_iter().flatten());
        }
    }
    // Nodes alike (one kernel, the same mechanisms) share a line.
    let mut merged: Vec<NodeMechanisms> = Vec::new();
    for ((node, kernel), stages) in per_node {
        match merged
            .iter_mut()
            .find(|m| m.kernel == kernel && m.stages == stages)
        {
            Some(same) => same.nodes.push(node),
            None => merged.push(NodeMechanisms {
                nodes: vec![node],
                kernel,
                stages,
            }),
        }
    }
    merged
}

/// `node1, node2 (kernel K): tc (clsact): bridge, veth; fentry/fexit: conntrack, filter; ...`:
/// stages grouped by the mechanisms that measured them.
pub fn line(m: &NodeMechanisms) -> String {
    let mut groups: BTreeMap<&BTreeSet<Via>, Vec<&str>> = BTreeMap::new();
    for (stage, via) in &m.stages {
        if !via.is_empty() {
            groups.entry(via).or_default().push(stage);
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(via, stages)| {
            let names: Vec<&str> = via.iter().map(|v| v.name()).collect();
            format!("{}: {}", names.join(" + "), stages.join(", "))
        })
        .collect();
    format!(
        "Measured on {} (kernel {}): {}",
        m.nodes.join(", "),
        m.kernel,
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{
        report::{CheckpointReport, Counters, SegmentReport},
        Stage,
    };

    fn doc(node: &str, kernel: &str, tc: Via, nf: Via) -> AgentReport {
        let cp = |id: u16, via: Option<Via>| CheckpointReport {
            id,
            name: format!("cp{id}"),
            kind: "x".into(),
            device: None,
            role: None,
            hook: None,
            priority: None,
            via,
            hits: 1,
        };
        let seg = |from: u16, to: u16, stage: Stage| SegmentReport {
            inbound: false,
            from,
            to,
            from_name: String::new(),
            to_name: String::new(),
            stage,
            count: 1,
            mean_ns: 1.0,
            p50_ns: 1,
            p90_ns: 1,
            p99_ns: 1,
            buckets: vec![],
        };
        AgentReport {
            schema: crate::agent::SCHEMA.into(),
            node: node.into(),
            netns: "n".into(),
            kernel: kernel.into(),
            attach_ms: 1.0,
            elapsed_s: 1.0,
            flows: vec![],
            sample: 1,
            checkpoints: vec![
                cp(1, Some(tc)),
                cp(2, Some(tc)),
                cp(3, Some(nf)),
                cp(4, Some(nf)),
            ],
            segments: vec![
                seg(1, 2, Stage::Veth),
                seg(2, 3, Stage::Routing),
                seg(3, 4, Stage::Conntrack),
            ],
            counters: Counters::default(),
            drops: vec![],
            not_measured: vec![],
            programs: vec![],
            stats_s: None,
            duty: None,
        }
    }

    #[test]
    fn stages_are_grouped_by_the_mechanisms_that_measured_them() {
        let docs = [
            doc("node1", "6.1.0-57-cloud-amd64", Via::Clsact, Via::Fentry),
            doc("node2", "6.1.0-57-cloud-amd64", Via::Clsact, Via::Fentry),
        ];
        let merged = collect(&docs);
        assert_eq!(merged.len(), 1, "alike nodes share a line: {merged:?}");
        assert_eq!(
            line(&merged[0]),
            "Measured on node1, node2 (kernel 6.1.0-57-cloud-amd64): tc (clsact): veth; \
             tc (clsact) + fentry/fexit: routing; fentry/fexit: conntrack"
        );
    }

    #[test]
    fn nodes_on_different_kernels_are_told_apart_and_old_documents_add_nothing() {
        let mut old = doc("node3", "6.18", Via::Tcx, Via::NetfilterLink);
        for c in &mut old.checkpoints {
            c.via = None;
        }
        let docs = [
            doc("node1", "6.1", Via::Clsact, Via::Fentry),
            doc("node2", "6.12", Via::Tcx, Via::NetfilterLink),
            old,
        ];
        let merged = collect(&docs);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[1].nodes, ["node2"]);
        assert!(line(&merged[1]).contains("tc (TCX): veth"));
    }
}
