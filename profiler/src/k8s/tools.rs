//! The study's tools in the client pods: the lab's command lines (`bench::tools`) run through
//! exec, their output read by the lab's parsers, so cluster and lab results are the same kind.

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
                pod: client.name.clone(),
                command: shown,
                exit_code,
                stderr,
                source,
            })
        }
        _ => Err(K8sError::Exec {
            pod: client.name.clone(),
            command: shown,
            source: ExecError::Exit {
                code: exit_code,
                stderr,
            },
        }),
    }
}

pub async fn ping(
    pods: &Api<Pod>,
    client: &BenchPod,
    target: Ipv4Addr,
    cfg: &BenchConfig,
) -> Result<PingReport, K8sError> {
    // ping exits 1 when replies are missing: the report's loss says so, as in the lab.
    run_parsed(
        pods,
        client,
        tools::ping_command(target, cfg),
        cfg.ping_timeout(),
        &[0, 1],
        false,
        crate::parse::ping::parse,
    )
    .await
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
    run_parsed(
        pods,
        client,
        tools::ab_command(target, cfg),
        cfg.ab_timeout(),
        &[0],
        true,
        crate::parse::ab::parse,
    )
    .await
}
