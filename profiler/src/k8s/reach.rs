//! Whether the benchmark's traffic gets through, asked from the client pods before anything
//! is measured: three pings, and a TCP connect to each server port, on both paths. A blocked
//! port otherwise shows up minutes later as an iperf3 that waits and gives up, and blocked
//! ICMP as a ping with 100% loss.
//!
//! The TCP check is bash's `/dev/tcp` under `timeout` (both in the netprof image): exit 0 is a
//! connection, 124 no answer within the limit (dropped on the way), anything else a refusal
//! (nothing listens, or a firewall rejects).

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::exec::{exec, ExecOutput};
use super::pods::BenchPod;
use super::K8sError;

/// Pings per ICMP check, and the wait for each reply.
const PINGS: u32 = 3;
/// How long a TCP connect may take before the port counts as dropped.
pub const CONNECT_SECS: u64 = 3;
/// Longest an exec of a check may take (start-up included).
const EXEC_LIMIT: Duration = Duration::from_secs(20);

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    Ok(String),
    /// What happened, and what usually causes it.
    Blocked {
        finding: String,
        fix: String,
    },
}

/// `ping -c 3` from `client` to `target`.
pub fn ping_command(target: Ipv4Addr) -> Vec<String> {
    let count = PINGS.to_string();
    [
        "ping",
        "-n",
        "-c",
        &count,
        "-i",
        "0.2",
        "-W",
        "1",
        &target.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A TCP connect from `client` to `target:port`, bounded by [`CONNECT_SECS`].
pub fn connect_command(target: Ipv4Addr, port: u16) -> Vec<String> {
    vec![
        "timeout".to_owned(),
        CONNECT_SECS.to_string(),
        "bash".to_owned(),
        "-c".to_owned(),
        format!("exec 3<>/dev/tcp/{target}/{port}"),
    ]
}

/// What the replies of a ping say.
pub fn judge_ping(output: &ExecOutput, target: Ipv4Addr) -> Reach {
    match crate::parse::ping::parse(&output.stdout) {
        Ok(report) if report.received > 0 => Reach::Ok(format!(
            "{}/{} echo replies from {target}",
            report.received, report.transmitted
        )),
        Ok(report) => Reach::Blocked {
            finding: format!("no echo reply from {target} ({} pings)", report.transmitted),
            fix: "ICMP is dropped on the way: allow ICMP echo between the nodes (cloud security groups often \
                  drop it) and check the NetworkPolicies listed above"
                .to_owned(),
        },
        Err(_) => Reach::Blocked {
            finding: format!(
                "ping {target} failed (exit {}): {}",
                output.exit_code,
                super::error::excerpt(&format!("{}{}", output.stdout, output.stderr))
            ),
            fix: "the client pod cannot ping: is ping in the image (deploy/Dockerfile), and may the pod open raw \
                  sockets (CAP_NET_RAW)?"
                .to_owned(),
        },
    }
}

/// What a TCP connect's exit says.
pub fn judge_connect(output: &ExecOutput, target: Ipv4Addr, port: u16) -> Reach {
    match output.exit_code {
        0 => Reach::Ok(format!("TCP {target}:{port} connects")),
        124 => Reach::Blocked {
            finding: format!("TCP {target}:{port}: no answer within {CONNECT_SECS} s"),
            fix: format!(
                "packets to port {port} are dropped on the way: allow TCP {port} between the nodes (security \
                 groups, host firewalls) and check the NetworkPolicies listed above"
            ),
        },
        code => Reach::Blocked {
            finding: format!(
                "TCP {target}:{port} refused (exit {code}{})",
                if output.stderr.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", super::error::excerpt(&output.stderr))
                }
            ),
            fix: format!(
                "nothing listens on {target}:{port}, or a firewall rejects the connection: is the server pod's \
                 port taken by another program on its node?"
            ),
        },
    }
}

/// Runs `command` in `client` and judges it; an exec that cannot run is an error of its own.
pub async fn check(
    pods: &Api<Pod>,
    client: &BenchPod,
    command: Vec<String>,
    judge: impl FnOnce(&ExecOutput) -> Reach,
) -> Result<Reach, K8sError> {
    let output = exec(pods, &client.name, client.container(), &command, EXEC_LIMIT).await?;
    Ok(judge(&output))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(stdout: &str, stderr: &str, exit_code: i32) -> ExecOutput {
        ExecOutput {
            stdout: stdout.into(),
            stderr: stderr.into(),
            exit_code,
        }
    }

    #[test]
    fn connect_exits_tell_dropped_from_refused() {
        let ip = Ipv4Addr::new(198, 19, 2, 30);
        assert_eq!(
            judge_connect(&output("", "", 0), ip, 5201),
            Reach::Ok("TCP 198.19.2.30:5201 connects".into())
        );
        let Reach::Blocked { finding, fix } = judge_connect(&output("", "", 124), ip, 5201) else {
            panic!()
        };
        assert_eq!(finding, "TCP 198.19.2.30:5201: no answer within 3 s");
        assert!(fix.contains("allow TCP 5201"), "{fix}");
        let refused = "bash: connect: Connection refused\nbash: line 1: /dev/tcp/198.19.2.30/5201: Connection refused\n";
        let Reach::Blocked { finding, .. } = judge_connect(&output("", refused, 1), ip, 5201)
        else {
            panic!()
        };
        assert!(
            finding.starts_with(
                "TCP 198.19.2.30:5201 refused (exit 1: bash: connect: Connection refused"
            ),
            "{finding}"
        );
        assert_eq!(
            connect_command(ip, 80).join(" "),
            "timeout 3 bash -c exec 3<>/dev/tcp/198.19.2.30/80"
        );
    }

    #[test]
    fn pings_pass_with_one_reply() {
        let ip = Ipv4Addr::new(198, 18, 0, 2);
        let lost = "PING 198.18.0.2 (198.18.0.2) 56(84) bytes of data.\n\n--- 198.18.0.2 ping statistics ---\n3 packets transmitted, 0 received, 100% packet loss, time 410ms\n\n";
        let Reach::Blocked { finding, fix } = judge_ping(&output(lost, "", 1), ip) else {
            panic!()
        };
        assert_eq!(finding, "no echo reply from 198.18.0.2 (3 pings)");
        assert!(fix.contains("allow ICMP echo"), "{fix}");
        let fixture = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/ping/iputils-loopback.txt"),
        )
        .unwrap();
        assert!(matches!(
            judge_ping(&output(&fixture, "", 0), ip),
            Reach::Ok(_)
        ));
    }
}
