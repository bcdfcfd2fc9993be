//! `POST /v1/start`'s body: parsed strictly (unknown fields are refused, so a typo is not
//! silently ignored) and validated into [`AgentOptions`] before anything is attached.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use profiler_common::datapath::MAX_FLOWS;
use serde::Deserialize;

use crate::agent::{AgentOptions, FlowSpec, HookFamilies};

/// Longest `duration_s` accepted: a day.
pub const MAX_DURATION_S: f64 = 86_400.0;

/// The JSON body of `POST /v1/start`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The node's network namespace (`ip netns` name); absent or null: the agent's own
    /// (in Kubernetes, with hostNetwork, the node's).
    #[serde(default)]
    pub netns: Option<String>,
    /// Pod namespaces whose `eth0` gets the device checkpoints.
    #[serde(default)]
    pub pod_netns: Vec<String>,
    /// Pods on this node by IP (IPv4 or IPv6): the agent finds their namespaces itself
    /// ([`crate::agent::pod_netns`]) and watches their `eth0` as with `pod_netns`.
    #[serde(default)]
    pub pod_ips: Vec<String>,
    /// The benchmark flows to follow (`PROTO:CLIENT-SERVER[:PORT]`).
    #[serde(default)]
    pub flows: Vec<String>,
    /// Addresses whose every packet is followed (each as the flows `icmp:*-IP`, `tcp:*-IP`,
    /// `udp:*-IP`): the older, costlier way; `flows` follows only the benchmark's traffic.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The node's uplink (default: the default route's device, else `eno1`).
    #[serde(default)]
    pub uplink: Option<String>,
    /// Stop by itself after this many seconds (the final report is kept for `/v1/stop`).
    #[serde(default)]
    pub duration_s: Option<f64>,
    /// Node name in the report (default: the namespace's name).
    #[serde(default)]
    pub node: Option<String>,
    /// Checkpoint families: `default`, `all` or some of `tc,dev,nf,trace,backlog,gauge` (default: tc,nf,trace,backlog,gauge).
    #[serde(default)]
    pub hooks: Option<String>,
    /// Attach for this share of every period only (1..=100; default 100: always).
    #[serde(default)]
    pub duty_percent: Option<u32>,
    /// The duty cycle's period in ms (default 1000).
    #[serde(default)]
    pub duty_period_ms: Option<u64>,
}

/// A validated start request.
#[derive(Debug, Clone, PartialEq)]
pub struct StartPlan {
    /// `options.netns` is empty when `own_netns` is set: the server names its namespace.
    pub options: AgentOptions,
    pub duration: Option<Duration>,
    /// Profile the agent's own network namespace.
    pub own_netns: bool,
    /// Pods whose namespaces the server finds before starting the agent.
    pub pod_ips: Vec<IpAddr>,
}

/// Parses and validates a start body; the error is the reason for a 400.
pub fn parse_start(body: &[u8]) -> Result<StartPlan, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("empty body: send a JSON object like {\"netns\": \"...\", \"flows\": [\"icmp:198.19.1.2-198.19.2.2\"]}".into());
    }
    let request: StartRequest =
        serde_json::from_slice(body).map_err(|e| format!("invalid start request: {e}"))?;
    request.validate()
}

fn check_netns(field: &str, name: &str) -> Result<(), String> {
    crate::netns::named_path(name).map(drop).map_err(|_| {
        format!("{field}: {name:?} is not an `ip netns` name (non-empty, no '/', not . or ..)")
    })
}

/// Linux interface names: 1 to 15 bytes, no '/', ':' or white space.
fn check_ifname(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: {name:?} is not an interface name (1-15 bytes, no '/', ':' or spaces)"
        ))
    }
}

impl StartRequest {
    pub fn validate(self) -> Result<StartPlan, String> {
        if let Some(netns) = &self.netns {
            check_netns("netns", netns)?;
        }
        for (i, pod) in self.pod_netns.iter().enumerate() {
            check_netns(&format!("pod_netns[{i}]"), pod)?;
        }
        let pod_ips = parse_pod_ips(&self.pod_ips)?;
        if self.endpoints.is_empty() && self.flows.is_empty() {
            return Err(
                "flows: give at least one flow to follow, e.g. \"icmp:198.19.1.2-198.19.2.2\" \
                 (or endpoints: addresses whose every packet is followed)"
                    .into(),
            );
        }
        let mut flows = Vec::new();
        for (i, text) in self.flows.iter().enumerate() {
            let flow = text
                .trim()
                .parse::<FlowSpec>()
                .map_err(|e| format!("flows[{i}]: {e}"))?;
            flows.push(flow);
        }
        for (i, text) in self.endpoints.iter().enumerate() {
            match text.trim().parse::<Ipv4Addr>() {
                Ok(ip) => flows.extend(FlowSpec::everything_of(ip)),
                Err(_) if text.parse::<std::net::Ipv6Addr>().is_ok() => {
                    return Err(format!(
                        "endpoints[{i}]: {text:?} is IPv6; the agent follows IPv4 flows only"
                    ))
                }
                Err(_) => return Err(format!("endpoints[{i}]: {text:?} is not an IPv4 address")),
            }
        }
        if flows.len() > MAX_FLOWS as usize {
            return Err(format!(
                "flows: {} flows (each endpoint counts as 3); the agent follows at most {MAX_FLOWS}",
                flows.len()
            ));
        }
        if let Some(uplink) = &self.uplink {
            check_ifname("uplink", uplink)?;
        }
        let duration = match self.duration_s {
            None => None,
            Some(d) if d.is_finite() && d > 0.0 && d <= MAX_DURATION_S => {
                Some(Duration::from_secs_f64(d))
            }
            Some(d) => {
                return Err(format!(
                    "duration_s: {d} is not a number of seconds in (0, {MAX_DURATION_S}]"
                ))
            }
        };
        let hooks = match &self.hooks {
            None => HookFamilies::default(),
            Some(text) => text
                .parse::<HookFamilies>()
                .map_err(|e| format!("hooks: {e}"))?,
        };
        if let Some(node) = &self.node {
            if node.is_empty() || node.chars().any(char::is_control) {
                return Err("node: give a non-empty name without control characters".into());
            }
        }
        let period = self.duty_period_ms.map_or(
            crate::agent::duty::DEFAULT_PERIOD,
            std::time::Duration::from_millis,
        );
        let duty = crate::agent::duty::Duty::from_percent(self.duty_percent.unwrap_or(100), period)
            .map_err(|e| format!("duty_percent/duty_period_ms: {e}"))?;
        let own_netns = self.netns.is_none();
        let options = AgentOptions {
            pod_netns: self.pod_netns,
            uplink: self.uplink,
            node: self.node,
            hooks,
            duty,
            ..AgentOptions::new(self.netns.unwrap_or_default(), flows)
        };
        Ok(StartPlan {
            options,
            duration,
            own_netns,
            pod_ips,
        })
    }
}

/// Most pods one start may name (each is searched for on the node).
pub const MAX_POD_IPS: usize = 64;

/// `pod_ips` as addresses: IPv4 or IPv6, no duplicates.
pub fn parse_pod_ips(texts: &[String]) -> Result<Vec<IpAddr>, String> {
    if texts.len() > MAX_POD_IPS {
        return Err(format!(
            "pod_ips: {} addresses; give at most {MAX_POD_IPS} (the pods on this node)",
            texts.len()
        ));
    }
    let mut ips = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let ip: IpAddr = text
            .trim()
            .parse()
            .map_err(|_| format!("pod_ips[{i}]: {text:?} is not an IP address"))?;
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            return Err(format!("pod_ips[{i}]: {ip} cannot be a pod's address"));
        }
        if ips.contains(&ip) {
            return Err(format!("pod_ips[{i}]: {ip} is listed twice"));
        }
        ips.push(ip);
    }
    Ok(ips)
}

/// The body of `POST /v1/locate`: which namespaces hold these pod IPs (nothing is attached).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocateRequest {
    pub pod_ips: Vec<String>,
}

/// Parses a locate body; the error is the reason for a 400.
pub fn parse_locate(body: &[u8]) -> Result<Vec<IpAddr>, String> {
    let request: LocateRequest = serde_json::from_slice(body).map_err(|e| {
        format!("invalid locate request (expected {{\"pod_ips\": [\"IP\", ...]}}): {e}")
    })?;
    if request.pod_ips.is_empty() {
        return Err("pod_ips: give at least one pod IP".into());
    }
    parse_pod_ips(&request.pod_ips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_request_becomes_agent_options() {
        let plan = parse_start(
            br#"{"netns": "netprof-lab-node2", "pod_netns": ["netprof-lab-pod2"],
                 "endpoints": ["198.19.1.2", " 198.19.2.2"], "uplink": null, "duration_s": 1.5,
                 "node": "worker2", "hooks": "tc,nf", "duty_percent": 10}"#,
        )
        .unwrap();
        let o = &plan.options;
        assert_eq!(o.netns, "netprof-lab-node2");
        assert_eq!(o.pod_netns, vec!["netprof-lab-pod2".to_owned()]);
        let expected: Vec<FlowSpec> = [Ipv4Addr::new(198, 19, 1, 2), Ipv4Addr::new(198, 19, 2, 2)]
            .into_iter()
            .flat_map(FlowSpec::everything_of)
            .collect();
        assert_eq!(o.flows, expected);
        assert_eq!(
            (o.uplink.as_deref(), o.node.as_deref()),
            (None, Some("worker2"))
        );
        assert!(o.hooks.tc && o.hooks.netfilter && !o.hooks.dev && !o.hooks.tracepoints);
        assert_eq!(o.duty.map(|d| d.on), Some(Duration::from_millis(100)));
        assert_eq!(plan.duration, Some(Duration::from_millis(1500)));
        assert!(!plan.own_netns && plan.pod_ips.is_empty());
        let minimal = parse_start(br#"{"netns":"n","endpoints":["198.18.0.1"]}"#).unwrap();
        assert_eq!((minimal.duration, minimal.own_netns), (None, false));
        assert_eq!(
            minimal.options,
            AgentOptions::new(
                "n",
                FlowSpec::everything_of(Ipv4Addr::new(198, 18, 0, 1)).to_vec()
            )
        );
        let flows = parse_start(
            br#"{"netns":"n","flows":["icmp:198.19.1.2-198.19.2.2","tcp:*-198.19.2.2:80"]}"#,
        )
        .unwrap();
        assert_eq!(
            flows.options.flows,
            vec![
                FlowSpec::icmp(
                    Some(Ipv4Addr::new(198, 19, 1, 2)),
                    Ipv4Addr::new(198, 19, 2, 2)
                ),
                FlowSpec::tcp(None, Ipv4Addr::new(198, 19, 2, 2), 80)
            ]
        );
    }

    #[test]
    fn pod_ips_are_addresses_of_either_family() {
        let plan = parse_start(
            br#"{"endpoints":["198.18.0.1"],"pod_ips":["198.19.1.2"," fd00:10:244::5"]}"#,
        )
        .unwrap();
        assert_eq!(
            plan.pod_ips,
            vec![
                "198.19.1.2".parse::<IpAddr>().unwrap(),
                "fd00:10:244::5".parse().unwrap()
            ]
        );
        assert_eq!(
            parse_locate(br#"{"pod_ips":["198.19.2.2"]}"#).unwrap(),
            vec!["198.19.2.2".parse::<IpAddr>().unwrap()]
        );
        for (body, expected) in [
            (r#"{"pod_ips":[]}"#, "at least one"),
            (
                r#"{"pod_ips":["x"]}"#,
                "pod_ips[0]: \"x\" is not an IP address",
            ),
            (r#"{"pod_ips":["127.0.0.1"]}"#, "cannot be a pod's address"),
            (r#"{"pod_ips":["198.19.1.2","198.19.1.2"]}"#, "listed twice"),
            (r#"{"ips":["198.19.1.2"]}"#, "unknown field `ips`"),
        ] {
            let got = parse_locate(body.as_bytes()).unwrap_err();
            assert!(got.contains(expected), "{body}: {got}");
        }
    }

    #[test]
    fn without_netns_the_agent_profiles_its_own_namespace() {
        for body in [
            r#"{"endpoints":["198.18.0.1"]}"#,
            r#"{"netns":null,"endpoints":["198.18.0.1"]}"#,
        ] {
            let plan = parse_start(body.as_bytes()).unwrap();
            assert!(plan.own_netns && plan.options.netns.is_empty(), "{body}");
        }
    }

    fn reason(body: &str) -> String {
        parse_start(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn bad_requests_are_refused_with_the_field_at_fault() {
        let cases = [
            ("", "empty body"),
            ("  \n", "empty body"),
            ("{", "invalid start request"),
            ("[1]", "invalid start request"),
            ("garbage", "invalid start request"),
            (r#"{"netns":"n"}"#, "flows: give at least one flow"),
            (
                r#"{"netns":"n","endpoints":["198.18.0.1"],"durations":3}"#,
                "unknown field `durations`",
            ),
            (
                r#"{"netns":"n","endpoints":[]}"#,
                "flows: give at least one flow",
            ),
            (
                r#"{"netns":"n","flows":["tcp:198.19.1.2-198.19.2.2:0"]}"#,
                "flows[0]: flow \"tcp:198.19.1.2-198.19.2.2:0\": \"0\" is not a port",
            ),
            (
                r#"{"netns":"n","endpoints":["198.18.0.1","300.1.1.1"]}"#,
                "endpoints[1]: \"300.1.1.1\" is not an IPv4 address",
            ),
            (r#"{"netns":"n","endpoints":["fd00::1"]}"#, "is IPv6"),
            (r#"{"netns":"n","endpoints":[198]}"#, "invalid type"),
            (
                r#"{"netns":"../x","endpoints":["198.18.0.1"]}"#,
                "netns: \"../x\"",
            ),
            (r#"{"netns":"","endpoints":["198.18.0.1"]}"#, "netns: \"\""),
            (
                r#"{"netns":"n","pod_netns":["a","b/c"],"endpoints":["198.18.0.1"]}"#,
                "pod_netns[1]",
            ),
            (
                r#"{"netns":"n","endpoints":["198.18.0.1"],"uplink":"a-very-long-name0"}"#,
                "uplink:",
            ),
            (
                r#"{"netns":"n","endpoints":["198.18.0.1"],"uplink":"eth 0"}"#,
                "uplink:",
            ),
            (
                r#"{"netns":"n","endpoints":["198.18.0.1"],"duration_s":0}"#,
                "duration_s: 0",
            ),
            (
                r#"{"netns":"n","endpoints":["198.18.0.1"],"duration_s":-3}"#,
                "duration_s: -3",
            ),
            (
                r#"{"netns":"n","endpoints":["198.18.0.1"],"duration_s":1e9}"#,
                "duration_s:",
            ),
            (
                r#"{"netns":"n","endpoints":["198.18.0.1"],"duration_s":"5"}"#,
                "invalid type",
            ),
            (
                r#"{"netns":"n","endpoints":["198.18.0.1"],"hooks":"tc,xdp"}"#,
                "hooks: unknown hook family 'xdp'",
            ),
            (
                r#"{"netns":"n","endpoints":["198.18.0.1"],"duty_percent":0}"#,
                "duty_percent/duty_period_ms: duty 0%",
            ),
            (
                r#"{"netns":"n","endpoints":["198.18.0.1"],"duty_percent":10,"duty_period_ms":50}"#,
                "at least 500 ms",
            ),
            (
                r#"{"netns":"n","endpoints":["198.18.0.1"],"node":""}"#,
                "node:",
            ),
        ];
        for (body, expected) in cases {
            let got = reason(body);
            assert!(
                got.contains(expected),
                "{body:?}: {got:?} lacks {expected:?}"
            );
        }
        let many: Vec<String> = (0..=MAX_FLOWS / 3)
            .map(|i| format!("\"198.19.{}.{}\"", i / 250, i % 250 + 1))
            .collect();
        let body = format!(r#"{{"netns":"n","endpoints":[{}]}}"#, many.join(","));
        assert!(reason(&body).contains("at most 1024"), "{}", reason(&body));
    }
}
