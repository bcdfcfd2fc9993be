//! Runs the client tools (ping, iperf3 -J, ab) inside a lab namespace and parses their output.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::config::BenchConfig;
use super::servers::IPERF3_PORT;
use crate::cmd::{Cmd, CmdError};
use crate::parse::{ab::AbReport, iperf3::Iperf3Report, ping::PingReport, ParseError};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("`{command}` did not finish within {secs} s and was stopped")]
    Timeout { command: String, secs: u64 },
    #[error("{what}: no reply came back, so there is no RTT to take (is the lab's path up?)")]
    NoReply { what: String },
    #[error("`{command}` exited with {status} and its output could not be read: {source}")]
    Output {
        command: String,
        status: String,
        #[source]
        source: ParseError,
    },
}

/// Runs `cmd` to completion (killed on timeout or when the caller is cancelled) and hands its
/// stdout, with the exit status, to `parse`.
async fn run_parsed<T>(
    cmd: Cmd,
    program: &str,
    with_stderr: bool,
    limit: Duration,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<T, ToolError> {
    crate::cmd::ensure_installed(program)?;
    let mut command = cmd.to_tokio();
    command.stdin(std::process::Stdio::null());
    let output = match tokio::time::timeout(limit, command.output()).await {
        Ok(result) => result.map_err(|source| CmdError::Spawn {
            command: cmd.display(),
            source,
        })?,
        Err(_) => {
            return Err(ToolError::Timeout {
                command: cmd.display(),
                secs: limit.as_secs(),
            })
        }
    };
    let mut stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if with_stderr {
        // ab reports its fatal errors (connection reset, timeout) on stderr.
        stdout.push_str(&String::from_utf8_lossy(&output.stderr));
    }
    match parse(&stdout) {
        Ok(report) => Ok(report),
        // A tool that failed and printed nothing useful: its stderr says why.
        Err(_) if !output.status.success() && stdout.trim().is_empty() => {
            Err(cmd.failed(&output).into())
        }
        Err(source) => Err(ToolError::Output {
            command: cmd.display(),
            status: output.status.to_string(),
            source,
        }),
    }
}

/// The study's ping command line (program first), shared with `netprof k8s run`.
pub fn ping_command(target: Ipv4Addr, cfg: &BenchConfig) -> Vec<String> {
    let count = cfg.ping_count.to_string();
    let interval = format!("{}", cfg.ping_interval_s);
    let args = [
        "ping",
        "-n",
        "-c",
        &count,
        "-i",
        &interval,
        "-W",
        "1",
        &target.to_string(),
    ];
    args.map(str::to_owned).to_vec()
}

/// The iperf3 client command line (JSON output).
pub fn iperf3_command(target: Ipv4Addr, cfg: &BenchConfig) -> Vec<String> {
    let (port, seconds) = (IPERF3_PORT.to_string(), cfg.iperf3_seconds.to_string());
    [
        "iperf3",
        "-c",
        &target.to_string(),
        "-p",
        &port,
        "-t",
        &seconds,
        "-J",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The ab command line against nginx's page at `target`.
pub fn ab_command(target: SocketAddrV4, cfg: &BenchConfig) -> Vec<String> {
    let (requests, concurrency) = (cfg.ab_requests.to_string(), cfg.ab_concurrency.to_string());
    [
        "ab",
        "-q",
        "-n",
        &requests,
        "-c",
        &concurrency,
        "-s",
        "10",
        &format!("http://{target}/"),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn in_netns(command: Vec<String>, netns: &str) -> Cmd {
    Cmd::new(&command[0]).args(&command[1..]).in_netns(netns)
}

pub async fn ping(
    netns: &str,
    target: Ipv4Addr,
    cfg: &BenchConfig,
) -> Result<PingReport, ToolError> {
    let cmd = in_netns(ping_command(target, cfg), netns);
    // ping exits 1 when some replies are missing; the report's loss says so, so parse anyway.
    run_parsed(
        cmd,
        "ping",
        false,
        cfg.ping_timeout(),
        crate::parse::ping::parse,
    )
    .await
}

pub async fn iperf3(
    netns: &str,
    target: Ipv4Addr,
    cfg: &BenchConfig,
) -> Result<Iperf3Report, ToolError> {
    let cmd = in_netns(iperf3_command(target, cfg), netns);
    run_parsed(
        cmd,
        "iperf3",
        false,
        cfg.iperf3_timeout(),
        crate::parse::iperf3::parse,
    )
    .await
}

pub async fn ab(
    netns: &str,
    target: SocketAddrV4,
    cfg: &BenchConfig,
) -> Result<AbReport, ToolError> {
    let cmd = in_netns(ab_command(target, cfg), netns);
    run_parsed(cmd, "ab", true, cfg.ab_timeout(), crate::parse::ab::parse).await
}

/// [`ab`] with the machine's busy CPU time per request during it, ns (`None` when
/// `/proc/stat` cannot be read or no request completed).
pub async fn ab_with_cpu(
    netns: &str,
    target: SocketAddrV4,
    cfg: &BenchConfig,
) -> Result<(AbReport, Option<f64>), ToolError> {
    let cpu = super::cpu_time::CpuMeter::start();
    let report = ab(netns, target, cfg).await?;
    let per_request = cpu.per_request(report.complete_requests);
    Ok((report, per_request))
}
