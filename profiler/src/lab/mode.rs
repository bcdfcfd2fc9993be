//! The network modes of the study, as the lab builds them.

use std::fmt;
use std::str::FromStr;

/// A pod network mode (or the bare `host` baseline).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Node to node over the uplink, no pods: the physical baseline.
    Host,
    /// Bridge `cni0` + veths; the other node's pod subnet is routed via its node IP.
    FlannelHostgw,
    /// Bridge `cni0` + veths + `flannel.1` vxlan device (VNI 1, port 8472, MTU 1450).
    FlannelVxlan,
    /// No bridge: host-side veth with proxy ARP for 169.254.1.1, /32 routes per pod.
    Calico,
    /// `eno1` enslaved to a bridge, pods on the underlay subnet, no iptables, no conntrack.
    L2,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Host,
        Mode::FlannelHostgw,
        Mode::FlannelVxlan,
        Mode::Calico,
        Mode::L2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Host => "host",
            Mode::FlannelHostgw => "flannel-hostgw",
            Mode::FlannelVxlan => "flannel-vxlan",
            Mode::Calico => "calico",
            Mode::L2 => "l2",
        }
    }

    /// Whether the mode has pods (every mode but `host`).
    pub fn has_pods(self) -> bool {
        self != Mode::Host
    }

    /// Whether kube-proxy's iptables rules (NodePort DNAT, MASQUERADE) are installed.
    /// `l2` is the study's GCE-like setup without iptables and conntrack on the path.
    pub fn has_kube_proxy(self) -> bool {
        matches!(
            self,
            Mode::FlannelHostgw | Mode::FlannelVxlan | Mode::Calico
        )
    }

    /// Parses `all` or a comma-separated list, keeping the order given and dropping repeats.
    pub fn parse_list(text: &str) -> Result<Vec<Mode>, UnknownMode> {
        if text.trim() == "all" {
            return Ok(Mode::ALL.to_vec());
        }
        let mut modes = Vec::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let mode: Mode = word.parse()?;
            if !modes.contains(&mode) {
                modes.push(mode);
            }
        }
        if modes.is_empty() {
            return Err(UnknownMode(text.to_owned()));
        }
        Ok(modes)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown network mode '{0}': use one of host, flannel-hostgw, flannel-vxlan, calico, l2 (or 'all')")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == text)
            .ok_or_else(|| UnknownMode(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for mode in Mode::ALL {
            assert_eq!(mode.name().parse::<Mode>(), Ok(mode));
        }
    }

    #[test]
    fn list_keeps_order_and_drops_repeats() {
        assert_eq!(
            Mode::parse_list("calico, host,calico").unwrap(),
            vec![Mode::Calico, Mode::Host]
        );
        assert_eq!(Mode::parse_list("all").unwrap().len(), 5);
    }

    #[test]
    fn unknown_mode_lists_the_valid_ones() {
        let err = Mode::parse_list("host,weave").unwrap_err();
        assert!(err.to_string().contains("'weave'"));
        assert!(err.to_string().contains("flannel-vxlan"));
        assert!(Mode::parse_list(" , ").is_err());
    }
}
