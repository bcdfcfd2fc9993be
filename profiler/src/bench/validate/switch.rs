//! Changes a check makes inside a running lab, so its two states share one lab: NOTRACK rules
//! in the raw table of both nodes, and a chain of non-matching rules jumped to from the top of
//! node 2's FORWARD chain. Everything lives in the lab's namespaces and goes with them.

use std::fmt::Write as _;

use crate::cmd::{Cmd, CmdError};
use crate::lab::{Lab, Node};

/// Switches NOTRACK on or off in a lab built with an empty raw table (`Ablation::empty_raw`):
/// the rules go into, or out of, raw PREROUTING and OUTPUT on both nodes. Nothing else moves.
pub fn set_notrack(lab: &Lab, on: bool) -> Result<(), CmdError> {
    for node in Node::BOTH {
        let ns = lab.names.node(node);
        Cmd::new("iptables")
            .args(["-t", "raw", "-F"])
            .in_netns(&ns)
            .run()?;
        if on {
            for chain in ["PREROUTING", "OUTPUT"] {
                Cmd::new("iptables")
                    .args(["-t", "raw", "-A", chain, "-j", "CT", "--notrack"])
                    .in_netns(&ns)
                    .run()?;
            }
        }
    }
    Ok(())
}

/// The chain holding the one-node cost.
pub const ONE_NODE_CHAIN: &str = "NETPROF-ONE-NODE";
/// The node that carries it: the server pod's, which forwards every request and reply.
pub const ONE_NODE: Node = Node::Two;

/// `iptables-restore --noflush` input for `rules` rules no lab packet matches: each one a
/// source address of 198.18.64.0/18, which the lab never uses (nodes are 198.18.0.0/24, pods
/// 198.19.0.0/16, services 198.18.128.0/17), so every packet is compared with every rule.
pub fn one_node_ruleset(rules: u32) -> String {
    let mut text = format!("*filter\n:{ONE_NODE_CHAIN} - [0:0]\n");
    for i in 0..rules {
        let _ = writeln!(
            text,
            "-A {ONE_NODE_CHAIN} -s 198.18.{}.{}/32 -j RETURN",
            64 + i / 256,
            i % 256
        );
    }
    text.push_str("COMMIT\n");
    text
}

/// Loads the chain on the node (not jumped to yet: unreferenced, it costs nothing).
pub fn install_one_node_rules(lab: &Lab, rules: u32) -> Result<(), CmdError> {
    Cmd::new("iptables-restore")
        .arg("--noflush")
        .in_netns(&lab.names.node(ONE_NODE))
        .stdin(one_node_ruleset(rules))
        .run()
        .map(|_| ())
}

/// Puts the jump to the chain at the top of FORWARD, or takes it out.
pub fn set_one_node_rules(lab: &Lab, on: bool) -> Result<(), CmdError> {
    let ns = lab.names.node(ONE_NODE);
    let jumps = Cmd::new("iptables")
        .args(["-t", "filter", "-S", "FORWARD"])
        .in_netns(&ns)
        .run()?
        .lines()
        .filter(|l| l.trim_end().ends_with(&format!("-j {ONE_NODE_CHAIN}")))
        .count();
    if on && jumps == 0 {
        Cmd::new("iptables")
            .args(["-t", "filter", "-I", "FORWARD", "1", "-j", ONE_NODE_CHAIN])
            .in_netns(&ns)
            .run()?;
    }
    if !on {
        for _ in 0..jumps {
            Cmd::new("iptables")
                .args(["-t", "filter", "-D", "FORWARD", "-j", ONE_NODE_CHAIN])
                .in_netns(&ns)
                .run()?;
        }
    }
    Ok(())
}

/// The rules the chain holds on the node, counted from `iptables -S`.
pub fn one_node_rule_count(lab: &Lab) -> Result<usize, CmdError> {
    Ok(Cmd::new("iptables")
        .args(["-t", "filter", "-S", ONE_NODE_CHAIN])
        .in_netns(&lab.names.node(ONE_NODE))
        .run()?
        .lines()
        .filter(|l| l.starts_with("-A "))
        .count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_use_addresses_the_lab_never_sends_from() {
        let text = one_node_ruleset(300);
        let rules: Vec<&str> = text.lines().filter(|l| l.starts_with("-A ")).collect();
        assert_eq!(rules.len(), 300);
        assert_eq!(rules[0], "-A NETPROF-ONE-NODE -s 198.18.64.0/32 -j RETURN");
        assert_eq!(
            rules[299],
            "-A NETPROF-ONE-NODE -s 198.18.65.43/32 -j RETURN"
        );
        assert!(text.starts_with("*filter\n") && text.ends_with("COMMIT\n"));
    }
}
