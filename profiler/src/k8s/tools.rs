//! The study's tools in the client pods: the lab's command lines (`bench::tools`) run through
//! exec, their output read by the lab's parsers, so cluster and lab results are the same kind.
//!
//! A result that parses can still be no measurement: no echo reply at all (ICMP blocked
//! between the nodes), or ab counting failed requests, non-2xx answers or another page than
//! the study's 612 bytes (something else answers on port 80). Those end the run with the reason.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::exec::{exec, ExecError, ExecOutput};
use super::pods::BenchPod;
use super::K8sError;
use crate::bench::{tools, BenchConfig};
use crate::parse::{ab::AbReport, iperf3::Iperf3Report, ping::PingReport, ParseError};

/// Runs `command` in the client pod and parses its output. Exit codes outside `ok_exits` fail
/// with stderr (or with what the output says, when the tool explained itself there).
async fn run_parsed<T>(
    pods: &Api<Pod>,
    client: &BenchPod,
    command: Vec<String>,
    limit: Duration,
    ok_exits: &[i32],
    with_stderr: bool,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<T, K8sError> {
    let ExecOutput {
        stdout,
        stderr,
        exit_code,
    } = exec(pods, &client.name, client.container(), &command, limit).await?;
    let shown = command.join(" ");
    let namespace = pods.namespace().unwrap_or_default().to_owned();
    let mut text = stdout;
    if with_stderr {
        // ab prints its fatal errors (connection reset, timeout) on stderr.
        text.push_str(&stderr);
    }
    let parsed = parse(&text);
    match parsed {
        Ok(report) if ok_exits.contains(&exit_code) => Ok(report),
        Err(source) if ok_exits.contains(&exit_code) || !text.trim().is_empty() => {
            Err(K8sError::Output {
                namespace,
                pod: client.name.clone(),
                command: shown,
                exit_code,
                stderr,
                source,
            })
        }
        _ => Err(K8sError::Exec {
            namespace,
            pod: client.name.clone(),
            command: shown,
            source: ExecError::Exit {
                code: exit_code,
                stderr,
            },
        }),
    }
}

/// A parsed result that is no measurement.
fn bad_result(pods: &Api<Pod>, client: &BenchPod, command: &[String], problem: String) -> K8sError {
    K8sError::BadResult {
        namespace: pods.namespace().unwrap_or_default().to_owned(),
        pod: client.name.clone(),
        command: command.join(" "),
        problem,
    }
}

pub async fn ping(
    pods: &Api<Pod>,
    client: &BenchPod,
    target: Ipv4Addr,
    cfg: &BenchConfig,
) -> Result<PingReport, K8sError> {
    let command = tools::ping_command(target, cfg);
    // ping exits 1 when replies are missing: the report's loss says so, as in the lab.
    let report = run_parsed(
        pods,
        client,
        command.clone(),
        cfg.ping_timeout(),
        &[0, 1],
        false,
        crate::parse::ping::parse,
    )
    .await?;
    match ping_problem(&report, target) {
        Some(problem) => Err(bad_result(pods, client, &command, problem)),
        None => Ok(report),
    }
}

/// Every echo lost: there is no latency to report.
pub fn ping_problem(report: &PingReport, target: Ipv4Addr) -> Option<String> {
    (report.received == 0).then(|| {
        format!(
            "no echo reply from {target} to any of {} pings: ICMP is dropped on the way (a security group, a \
             firewall or a NetworkPolicy; `netprof k8s doctor` checks each path), or {target} is down",
            report.transmitted
        )
    })
}

/// Failures, non-2xx answers, or another page than nginx's 612 bytes.
pub fn ab_problem(report: &AbReport, target: SocketAddrV4) -> Option<String> {
    let mut problems = Vec::new();
    if report.failed_requests > 0 {
        problems.push(format!(
            "{} of {} requests failed",
            report.failed_requests, report.complete_requests
        ));
    }
    if report.non_2xx_responses > 0 {
        problems.push(format!("{} answers were not 2xx", report.non_2xx_responses));
    }
    let page = crate::bench::servers::PAGE_BYTES as u64;
    if report.document_length_bytes != page {
        problems.push(format!(
            "the page has {} bytes, not the study's {page}",
            report.document_length_bytes
        ));
    }
    (!problems.is_empty()).then(|| {
        format!(
            "{}: is it netprof's nginx answering on {target} (the ConfigMap netprof-bench-nginx), and nothing \
             else on that port?",
            problems.join(", ")
        )
    })
}

pub async fn iperf3(
    pods: &Api<Pod>,
    client: &BenchPod,
    target: Ipv4Addr,
    cfg: &BenchConfig,
) -> Result<Iperf3Report, K8sError> {
    run_parsed(
        pods,
        client,
        tools::iperf3_command(target, cfg),
        cfg.iperf3_timeout(),
        &[0],
        false,
        crate::parse::iperf3::parse,
    )
    .await
}

pub async fn ab(
    pods: &Api<Pod>,
    client: &BenchPod,
    target: SocketAddrV4,
    cfg: &BenchConfig,
) -> Result<AbReport, K8sError> {
    let command = tools::ab_command(target, cfg);
    let report = run_parsed(
        pods,
        client,
        command.clone(),
        cfg.ab_timeout(),
        &[0],
        true,
        crate::parse::ab::parse,
    )
    .await?;
    match ab_problem(&report, target) {
        Some(problem) => Err(bad_result(pods, client, &command, problem)),
        None => Ok(report),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> String {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures")
                .join(path),
        )
        .unwrap()
    }

    #[test]
    fn a_ping_without_any_reply_is_no_measurement() {
        let target = Ipv4Addr::new(198, 18, 0, 2);
        let mut report = crate::parse::ping::parse(&fixture("ping/iputils-loopback.txt")).unwrap();
        assert_eq!(ping_problem(&report, target), None);
        report.received = 0;
        let problem = ping_problem(&report, target).unwrap();
        assert!(
            problem.starts_with("no echo reply from 198.18.0.2 to any of"),
            "{problem}"
        );
    }

    #[test]
    fn ab_must_fetch_the_page_without_failures() {
        let target = SocketAddrV4::new(Ipv4Addr::new(198, 19, 2, 20), 80);
        let good = crate::parse::ab::parse(&fixture("ab/nginx-loopback-n2000-c20.txt")).unwrap();
        assert_eq!(ab_problem(&good, target), None);
        let bad = AbReport {
            failed_requests: 3,
            non_2xx_responses: 7,
            document_length_bytes: 153,
            ..good
        };
        let problem = ab_problem(&bad, target).unwrap();
        assert!(
            problem.starts_with("3 of 2000 requests failed, 7 answers were not 2xx, the page has 153 bytes, not the study's 612"),
            "{problem}"
        );
    }
}
