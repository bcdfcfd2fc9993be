//! The ground-truth checks: each compares two states of the lab, `a` (with the cost) and `b`
//! (without it), that differ by one thing.

use std::fmt;

use crate::lab::{Ablation, Mode};

/// One check of the attribution against reality.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// Connection tracking: `a` tracks, `b` has `CT --notrack` rules in its raw table (both
    /// have that raw table, so they differ only by what tracking costs). One lab, switched in
    /// place: rebuilding a lab moves the p50 by more than conntrack costs.
    Notrack,
    /// kube-proxy's rules (nat and filter tables, and the conntrack they pull in): `a` has
    /// them, `b` has no iptables rule at all. Two labs, up side by side.
    NoKubeProxy,
    /// A cost on one node only: `a` has non-matching rules at the top of node 2's FORWARD
    /// chain, `b` does not. One lab, the rules' jump switched in place.
    OneNodeRules,
    /// Encapsulation: `a` is flannel-vxlan, `b` flannel-hostgw, on the same hosts. Two labs, up
    /// side by side.
    Encapsulation,
}

impl CheckKind {
    pub const ALL: [CheckKind; 4] = [
        CheckKind::Notrack,
        CheckKind::NoKubeProxy,
        CheckKind::OneNodeRules,
        CheckKind::Encapsulation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Notrack => "notrack",
            CheckKind::NoKubeProxy => "no-kube-proxy",
            CheckKind::OneNodeRules => "one-node-rules",
            CheckKind::Encapsulation => "encapsulation",
        }
    }

    /// What `a` has that `b` lacks, in words.
    pub fn what(self) -> &'static str {
        match self {
            CheckKind::Notrack => "connection tracking (b: CT --notrack in raw)",
            CheckKind::NoKubeProxy => "kube-proxy's iptables rules (b: none)",
            CheckKind::OneNodeRules => "non-matching rules atop node 2's FORWARD (b: none)",
            CheckKind::Encapsulation => "VXLAN: flannel-vxlan (b: flannel-hostgw)",
        }
    }

    /// Whether the prediction needs `b` profiled too. Removing tables leaves nothing of them
    /// to profile, so NOTRACK and no kube-proxy are predicted from `a` alone; the rules and the
    /// encapsulation change segments both states have (the outer packet of a tunnel passes
    /// the same hooks as the inner one), so their prediction is `a`'s profile minus `b`'s.
    pub fn profiles_b(self) -> bool {
        matches!(self, CheckKind::OneNodeRules | CheckKind::Encapsulation)
    }

    /// The lab of each state: its mode and what is built; `None` for `b` when `b` is `a`'s lab
    /// switched in place.
    pub fn labs(self, mode: Mode) -> (LabPlan, Option<LabPlan>) {
        let plan = |mode, ablation| LabPlan { mode, ablation };
        match self {
            CheckKind::Notrack => (
                plan(
                    mode,
                    Ablation {
                        empty_raw: true,
                        ..Ablation::default()
                    },
                ),
                None,
            ),
            CheckKind::NoKubeProxy => (
                plan(mode, Ablation::default()),
                Some(plan(
                    mode,
                    Ablation {
                        no_kube_proxy: true,
                        ..Ablation::default()
                    },
                )),
            ),
            CheckKind::OneNodeRules => (plan(mode, Ablation::default()), None),
            CheckKind::Encapsulation => (
                plan(Mode::FlannelVxlan, Ablation::default()),
                Some(plan(Mode::FlannelHostgw, Ablation::default())),
            ),
        }
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for CheckKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        CheckKind::ALL
            .into_iter()
            .find(|c| c.name() == text)
            .ok_or_else(|| {
                format!("unknown check '{text}': use notrack, no-kube-proxy, one-node-rules, encapsulation")
            })
    }
}

/// A lab to build for a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabPlan {
    pub mode: Mode,
    pub ablation: Ablation,
}

/// The state a sample measured.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// With the cost.
    A,
    /// Without it.
    B,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }

    /// The two sides in a round's order: `a` first in even rounds, `b` first in odd ones, so a
    /// drift during the run does not fall on one side.
    pub fn order(round: u32) -> [Side; 2] {
        if round.is_multiple_of(2) {
            [Side::A, Side::B]
        } else {
            [Side::B, Side::A]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_rounds_alternate() {
        for c in CheckKind::ALL {
            assert_eq!(c.name().parse::<CheckKind>(), Ok(c));
        }
        assert!("sweep"
            .parse::<CheckKind>()
            .unwrap_err()
            .contains("notrack"));
        assert_eq!(Side::order(0), [Side::A, Side::B]);
        assert_eq!(Side::order(3), [Side::B, Side::A]);
        let (a, b) = CheckKind::Encapsulation.labs(Mode::Calico);
        assert_eq!(
            (a.mode, b.unwrap().mode),
            (Mode::FlannelVxlan, Mode::FlannelHostgw)
        );
    }
}
