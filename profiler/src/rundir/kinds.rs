//! The benchmark steps' coordinates as enums: which path and which tool (the node is
//! `lab::Node`). Their JSON words are the ones result files have always used.

use std::fmt;

/// Which of the study's two paths a benchmark ran on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum NetPath {
    /// Node to node (hostNetwork): the physical baseline.
    #[serde(rename = "host path")]
    Host,
    /// Pod to pod through the pod network.
    #[serde(rename = "pod path")]
    Pod,
}

impl NetPath {
    pub const ALL: [NetPath; 2] = [NetPath::Host, NetPath::Pod];

    /// Short name (`host`, `pod`): labels, table cells.
    pub fn name(self) -> &'static str {
        match self {
            NetPath::Host => "host",
            NetPath::Pod => "pod",
        }
    }

    /// How results and reports name the path.
    pub fn label(self) -> &'static str {
        match self {
            NetPath::Host => "host path",
            NetPath::Pod => "pod path",
        }
    }

    /// In file names.
    pub fn slug(self) -> &'static str {
        match self {
            NetPath::Host => "host-path",
            NetPath::Pod => "pod-path",
        }
    }
}

impl fmt::Display for NetPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A benchmark tool.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    Ping,
    Iperf3,
    Ab,
}

impl Tool {
    /// In the order a path runs them.
    pub const ALL: [Tool; 3] = [Tool::Ping, Tool::Iperf3, Tool::Ab];

    pub fn name(self) -> &'static str {
        match self {
            Tool::Ping => "ping",
            Tool::Iperf3 => "iperf3",
            Tool::Ab => "ab",
        }
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
