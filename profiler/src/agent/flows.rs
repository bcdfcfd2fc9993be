//! The benchmark flows an agent follows: `PROTO:ADDR-ADDR[:PORT]` on the command line and in
//! the control API, and their keys in the kernel's flow table (`MAP_FLOWS`).
//!
//! A flow names a protocol (`icmp`, `tcp`, `udp`), the client's address (or `*` for any peer,
//! e.g. a server's replies to a masqueraded client) and the server's address and port (no port
//! for ICMP; none for TCP/UDP means every port). Packets of both directions match. Other
//! traffic, even to the same node, is not followed.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use profiler_common::datapath::{
    FlowKey, FlowRule, FLOW_ALWAYS, FLOW_ANY_PEER, FLOW_ANY_PORT, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP, MAX_FLOWS,
};

/// A flow's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Icmp,
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Icmp => "icmp",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn number(self) -> u8 {
        match self {
            Proto::Icmp => IPPROTO_ICMP,
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }
}

/// One benchmark flow to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowSpec {
    pub proto: Proto,
    /// The client's address; `None`: any peer of the server.
    pub client: Option<Ipv4Addr>,
    pub server: Ipv4Addr,
    /// The server's port; `None`: every port (always `None` for ICMP).
    pub port: Option<u16>,
}

/// Why a flow does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "flow {text:?}: {reason}; write PROTO:CLIENT-SERVER[:PORT], e.g. icmp:198.19.1.2-198.19.2.2 \
     or tcp:198.18.0.1-198.18.0.2:5201 (CLIENT may be * for any peer)"
)]
pub struct FlowError {
    pub text: String,
    pub reason: String,
}

impl FromStr for FlowSpec {
    type Err = FlowError;

    fn from_str(text: &str) -> Result<Self, FlowError> {
        let bad = |reason: &str| FlowError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (proto, rest) = text.split_once(':').ok_or_else(|| bad("no protocol"))?;
        let proto = match proto {
            "icmp" => Proto::Icmp,
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => return Err(bad(&format!("unknown protocol {other:?} (icmp, tcp, udp)"))),
        };
        let (client, rest) = rest
            .split_once('-')
            .ok_or_else(|| bad("no '-' between the two addresses"))?;
        let client = match client {
            "*" => None,
            addr => Some(
                addr.parse::<Ipv4Addr>()
                    .map_err(|_| bad(&format!("{addr:?} is not an IPv4 address or *")))?,
            ),
        };
        let (server, port) = match rest.split_once(':') {
            Some((server, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| bad(&format!("{port:?} is not a port (1-65535)")))?;
                (server, Some(port))
            }
            None => (rest, None),
        };
        let server = server
            .parse::<Ipv4Addr>()
            .map_err(|_| bad(&format!("{server:?} is not an IPv4 address")))?;
        if proto == Proto::Icmp && port.is_some() {
            return Err(bad("ICMP has no ports"));
        }
        if server.is_unspecified() || client.is_some_and(|c| c.is_unspecified()) {
            return Err(bad("0.0.0.0 is no endpoint (use * for any peer)"));
        }
        Ok(Self {
            proto,
            client,
            server,
            port,
        })
    }
}

impl fmt::Display for FlowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.proto.name())?;
        match self.client {
            Some(client) => write!(f, "{client}")?,
            None => f.write_str("*")?,
        }
        write!(f, "-{}", self.server)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for FlowSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for FlowSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FlowSpec {
    /// ICMP from `client` (`None`: any peer) to `server` (pings: always followed, whatever
    /// the sampling).
    pub fn icmp(client: Option<Ipv4Addr>, server: Ipv4Addr) -> Self {
        Self {
            proto: Proto::Icmp,
            client,
            server,
            port: None,
        }
    }

    /// TCP from `client` (`None`: any peer) to `server:port`.
    pub fn tcp(client: Option<Ipv4Addr>, server: Ipv4Addr, port: u16) -> Self {
        Self {
            proto: Proto::Tcp,
            client,
            server,
            port: Some(port),
        }
    }

    /// Every packet from or to `addr`: what `--endpoint` meant before flows (each protocol,
    /// any peer, any port). Costs four more lookups per admission check than a flow does.
    pub fn everything_of(addr: Ipv4Addr) -> [Self; 3] {
        [Proto::Icmp, Proto::Tcp, Proto::Udp].map(|proto| Self {
            proto,
            client: None,
            server: addr,
            port: None,
        })
    }

    /// The flow's key and rule in the kernel's flow table.
    pub fn kernel_entry(&self) -> (FlowKey, FlowRule) {
        let proto = self.proto.number();
        let server = header_u32(self.server);
        let port = self.port.unwrap_or(0);
        let key = match self.client {
            Some(client) => FlowKey::new(proto, header_u32(client), server, port),
            None => FlowKey::any_peer(proto, server, port),
        };
        // Pings are few and their counts must be exact; loads may be sampled.
        let flags = if self.proto == Proto::Icmp {
            FLOW_ALWAYS
        } else {
            0
        };
        (key, FlowRule { flags })
    }
}

/// An address as the kernel programs read it from an IPv4 header.
fn header_u32(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// `Config::flow_flags` for a set of flows: which extra lookups the kernel must make.
pub fn config_flags(flows: &[FlowSpec]) -> u32 {
    let mut flags = 0;
    for flow in flows {
        if flow.client.is_none() {
            flags |= FLOW_ANY_PEER;
        }
        if flow.proto != Proto::Icmp && flow.port.is_none() {
            flags |= FLOW_ANY_PORT;
        }
    }
    flags
}

/// Too many flows for the kernel's table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many flows ({count}): the kernel's flow table holds {max}")]
pub struct TooManyFlows {
    pub count: usize,
    pub max: u32,
}

/// The flows, checked against the table's capacity.
pub fn check_count(flows: &[FlowSpec]) -> Result<(), TooManyFlows> {
    if flows.len() > MAX_FLOWS as usize {
        return Err(TooManyFlows {
            count: flows.len(),
            max: MAX_FLOWS,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_parse_and_print_back() {
        for text in [
            "icmp:198.19.1.2-198.19.2.2",
            "tcp:198.18.0.1-198.18.0.2:5201",
            "tcp:*-198.19.2.2:80",
            "udp:198.18.0.1-198.18.0.2",
        ] {
            let flow: FlowSpec = text.parse().unwrap();
            assert_eq!(flow.to_string(), text);
        }
        let flow: FlowSpec = "tcp:*-198.19.2.2:80".parse().unwrap();
        assert_eq!(flow.client, None);
        assert_eq!(flow.port, Some(80));
    }

    #[test]
    fn bad_flows_say_what_to_write() {
        for (text, part) in [
            ("198.19.1.2-198.19.2.2", "no protocol"),
            ("sctp:1.1.1.1-2.2.2.2", "unknown protocol"),
            ("tcp:198.19.1.2", "no '-'"),
            ("tcp:198.19.1.2-198.19.2.300:80", "not an IPv4 address"),
            ("tcp:198.19.1.2-198.19.2.2:0", "not a port"),
            ("tcp:198.19.1.2-198.19.2.2:http", "not a port"),
            ("icmp:198.19.1.2-198.19.2.2:7", "ICMP has no ports"),
            ("tcp:0.0.0.0-198.19.2.2:80", "use * for any peer"),
        ] {
            let err = text.parse::<FlowSpec>().unwrap_err().to_string();
            assert!(err.contains(part), "{text}: {err}");
            assert!(err.contains("PROTO:CLIENT-SERVER[:PORT]"), "{err}");
        }
    }

    #[test]
    fn both_directions_share_one_key_and_pings_are_never_sampled() {
        let a = Ipv4Addr::new(198, 19, 1, 2);
        let b = Ipv4Addr::new(198, 19, 2, 2);
        let (forward, rule) = FlowSpec::tcp(Some(a), b, 80).kernel_entry();
        let (backward, _) = FlowSpec::tcp(Some(b), a, 80).kernel_entry();
        assert_eq!(forward, backward);
        assert_eq!(forward.port, 80);
        assert_eq!(rule.flags & FLOW_ALWAYS, 0);
        let (_, ping) = FlowSpec::icmp(Some(a), b).kernel_entry();
        assert_eq!(ping.flags, FLOW_ALWAYS);
        let (any, _) = FlowSpec::tcp(None, b, 80).kernel_entry();
        assert_eq!(
            (any.addr_lo, any.addr_hi),
            (0, u32::from_ne_bytes(b.octets()))
        );
    }

    #[test]
    fn config_flags_ask_for_extra_lookups_only_when_needed() {
        let a = Ipv4Addr::new(198, 18, 0, 1);
        let b = Ipv4Addr::new(198, 18, 0, 2);
        assert_eq!(
            config_flags(&[FlowSpec::icmp(Some(a), b), FlowSpec::tcp(Some(a), b, 5201)]),
            0
        );
        assert_eq!(config_flags(&[FlowSpec::tcp(None, b, 80)]), FLOW_ANY_PEER);
        assert_eq!(
            config_flags(&FlowSpec::everything_of(a)),
            FLOW_ANY_PEER | FLOW_ANY_PORT
        );
    }
}
