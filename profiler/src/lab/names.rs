//! Names of a lab's network namespaces. Each lab has a name (default `lab`) so tests and
//! parallel users can run separate labs; every namespace carries the `netprof-` prefix.

use super::addressing::Node;

pub const PREFIX: &str = "netprof-";
pub const DEFAULT_LAB: &str = "lab";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid lab name '{0}': use 1-24 characters from a-z, 0-9 and '-'")]
pub struct InvalidLabName(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabNames {
    lab: String,
}

impl LabNames {
    pub fn new(lab: &str) -> Result<Self, InvalidLabName> {
        let valid = !lab.is_empty()
            && lab.len() <= 24
            && !lab.starts_with('-')
            && lab
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(Self {
                lab: lab.to_owned(),
            })
        } else {
            Err(InvalidLabName(lab.to_owned()))
        }
    }

    pub fn lab(&self) -> &str {
        &self.lab
    }

    /// The node's namespace ("the host" of that node).
    pub fn node(&self, node: Node) -> String {
        format!("{PREFIX}{}-node{}", self.lab, node.index())
    }

    /// The pod's namespace on `node`: the client pod on node 1, the server pod on node 2.
    pub fn pod(&self, node: Node) -> String {
        format!("{PREFIX}{}-pod{}", self.lab, node.index())
    }

    /// The prefix every namespace of this lab starts with.
    pub fn namespace_prefix(&self) -> String {
        format!("{PREFIX}{}-", self.lab)
    }

    /// Whether `ns` is one of this lab's namespaces (and not a lab whose name extends ours).
    pub fn owns(&self, ns: &str) -> bool {
        ns.strip_prefix(&self.namespace_prefix())
            .is_some_and(|rest| ["node1", "node2", "pod1", "pod2"].contains(&rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let names = LabNames::new("lab").unwrap();
        assert_eq!(names.node(Node::One), "netprof-lab-node1");
        assert_eq!(names.pod(Node::Two), "netprof-lab-pod2");
    }

    #[test]
    fn a_lab_does_not_own_another_labs_namespaces() {
        let names = LabNames::new("lab").unwrap();
        assert!(names.owns("netprof-lab-node2"));
        assert!(!names.owns("netprof-lab-x-node1"));
        assert!(!names.owns("netprof-lab2-node1"));
    }

    #[test]
    fn bad_names_are_rejected() {
        for bad in ["", "Lab", "a b", "-x", "x/y", "aaaaaaaaaaaaaaaaaaaaaaaaa"] {
            assert!(LabNames::new(bad).is_err(), "{bad}");
        }
    }
}
