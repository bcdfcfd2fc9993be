//! The servers the benchmarks talk to: nginx (one worker, the study's 612-byte page) and an
//! iperf3 server, each started inside a lab namespace and stopped when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmd::{Cmd, CmdError};

/// nginx's stock welcome page was 612 bytes when the study ran; ab's "Document Length" must
/// show 612 so results compare with the study's.
pub const PAGE_BYTES: usize = 612;
pub const IPERF3_PORT: u16 = 5201;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} in {netns} did not start listening on port {port} within {secs} s{detail}")]
    NotListening {
        what: &'static str,
        netns: String,
        port: u16,
        secs: u64,
        detail: String,
    },
}

/// A server process in a namespace; killed on drop (the lab's `down` also kills whatever is left
/// in its namespaces, e.g. nginx's worker).
#[derive(Debug)]
pub struct RunningServer {
    child: std::process::Child,
    pub what: &'static str,
    pub netns: String,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        // SIGTERM lets nginx's master take its worker down with it.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 612-byte HTML page in the style of nginx's welcome page.
pub fn page() -> String {
    let head = "<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n<body>\n<h1>Welcome to nginx!</h1>\n<p>netprof benchmark page, served by one nginx worker as in the study.</p>\n";
    let tail = "</body>\n</html>\n";
    let filler = PAGE_BYTES - head.len() - tail.len() - "<p></p>\n".len();
    format!("{head}<p>{}</p>\n{tail}", "x".repeat(filler))
}

fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  server {{\n    listen 80 backlog=4096;\n    root {d}/www;\n    location / {{ index index.html; }}\n  }}\n}}\n"
    )
}

/// Starts nginx with one worker inside `netns`, with its files under `work_dir`.
pub fn start_nginx(netns: &str, work_dir: &Path) -> Result<RunningServer, ServerError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ServerError::Io { path, source }
    };
    fs::create_dir_all(work_dir.join("www")).map_err(io(work_dir))?;
    fs::create_dir_all(work_dir.join("tmp")).map_err(io(work_dir))?;
    let index = work_dir.join("www/index.html");
    fs::write(&index, page()).map_err(io(&index))?;
    let conf = work_dir.join("nginx.conf");
    fs::write(&conf, nginx_conf(work_dir)).map_err(io(&conf))?;
    let cmd = Cmd::new("nginx")
        .args(["-c", &conf.display().to_string(), "-g", "daemon off;"])
        .in_netns(netns);
    let server = spawn(&cmd, "nginx", netns)?;
    wait_listening(server, 80, || {
        fs::read_to_string(work_dir.join("error.log"))
            .map(|t| t.lines().last().unwrap_or_default().to_owned())
            .unwrap_or_default()
    })
}

/// Starts an iperf3 server inside `netns`; it serves the runs one after the other.
pub fn start_iperf3(netns: &str) -> Result<RunningServer, ServerError> {
    let cmd = Cmd::new("iperf3")
        .args(["-s", "-p", &IPERF3_PORT.to_string()])
        .in_netns(netns);
    let server = spawn(&cmd, "iperf3 server", netns)?;
    wait_listening(server, IPERF3_PORT, String::new)
}

fn spawn(cmd: &Cmd, what: &'static str, netns: &str) -> Result<RunningServer, ServerError> {
    crate::cmd::ensure_installed(cmd_program(what))?;
    let child = cmd
        .to_std()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|source| CmdError::Spawn {
            command: cmd.display(),
            source,
        })?;
    Ok(RunningServer {
        child,
        what,
        netns: netns.to_owned(),
    })
}

fn cmd_program(what: &str) -> &'static str {
    if what.starts_with("nginx") {
        "nginx"
    } else {
        "iperf3"
    }
}

/// Polls the namespace's listening sockets (`ss`) until `port` shows up or the server exits.
fn wait_listening(
    mut server: RunningServer,
    port: u16,
    detail: impl Fn() -> String,
) -> Result<RunningServer, ServerError> {
    const LIMIT: Duration = Duration::from_secs(5);
    let start = Instant::now();
    let filter = format!("sport = :{port}");
    loop {
        let out = Cmd::new("ss")
            .args(["-Hltn", &filter])
            .in_netns(&server.netns)
            .run()?;
        if !out.trim().is_empty() {
            return Ok(server);
        }
        let exited = matches!(server.child.try_wait(), Ok(Some(_)));
        if exited || start.elapsed() > LIMIT {
            let extra = detail();
            return Err(ServerError::NotListening {
                what: server.what,
                netns: server.netns.clone(),
                port,
                secs: LIMIT.as_secs(),
                detail: if exited {
                    format!(" (it exited: {extra})")
                } else {
                    String::new()
                },
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_exactly_612_bytes() {
        assert_eq!(page().len(), PAGE_BYTES);
    }
}
