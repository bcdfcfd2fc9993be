//! `xtask vm-guest`: the runner inside the VM. It gathers facts and judges nothing: for each
//! scenario it builds the lab, starts one agent per node, pings the path, stops the agents,
//! records what is left in the kernel and removes the lab. Everything lands in `--out` as
//! files (agent documents, logs, listings, `summary.json`); the host-side test
//! (`tests/vm_matrix.rs`) asserts on them, so a failure there names the kernel and the file.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::scenarios::{Scenario, LAB, NF_LINKS_PARAM, PINGS, SCENARIOS};

/// Modules loaded up front: the lab's devices and netfilter (br_netfilter: the lab's bridges
/// hand frames to iptables), tc's clsact and bpf classifier, and the table walkers the
/// fentry fallback traces (ip_tables too: with it loaded all three functions are attachable,
/// as on a node that ever ran iptables-legacy). iptables' own extensions load on demand.
const MODULES: &[&str] = &[
    "veth",
    "vxlan",
    "bridge",
    "br_netfilter",
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "ip_tables",
    "sch_ingress",
    "cls_bpf",
    "cls_matchall",
    "act_gact",
];

/// How long an agent may take to attach under emulation.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an agent may take to write its document and detach after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(out: &Path) -> Result<()> {
    fs::create_dir_all(out)?;
    let started = Instant::now();
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    println!("vm-guest: kernel {release}");
    let modprobe = command_step(
        "modprobe",
        Command::new("modprobe").arg("-a").args(MODULES),
        &out.join("modprobe.log"),
    );
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let nf_links = cmdline
        .split_whitespace()
        .any(|p| p == format!("{NF_LINKS_PARAM}=y"));
    let mut scenarios = Vec::new();
    for scenario in SCENARIOS.iter().filter(|s| s.runs_with(nf_links)) {
        let dir = out.join(scenario.name);
        fs::create_dir_all(&dir)?;
        println!("vm-guest: scenario {}", scenario.name);
        let steps = run_scenario(scenario, &dir);
        scenarios.push(json!({
            "name": scenario.name,
            "mode": scenario.mode,
            "hooks": scenario.hooks,
            "foreign_clsact": scenario.foreign_clsact,
            "steps": steps,
        }));
    }
    let netns_left = capture("ip", &["netns", "list"]);
    let summary = json!({
        "kernel": release,
        "pings": PINGS,
        "modprobe": modprobe,
        "btf_objects": btf_objects(),
        "modules": fs::read_to_string("/proc/modules").unwrap_or_default()
            .lines().filter_map(|l| l.split_whitespace().next()).collect::<Vec<_>>(),
        "scenarios": scenarios,
        "netns_left": netns_left.lines().collect::<Vec<_>>(),
        "programs_left": bpftool_json(&["prog", "show"]),
        "seconds": started.elapsed().as_secs_f64(),
    });
    fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!("vm-guest: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One scenario's steps, each `{step, ok, seconds, detail}`; files go to `dir`.
fn run_scenario(scenario: &Scenario, dir: &Path) -> Vec<Value> {
    let mut steps = Vec::new();
    let lab_up = command_step(
        "lab-up",
        Command::new("netprof").args(["lab", "up", "--mode", scenario.mode, "--lab", LAB]),
        &dir.join("lab-up.log"),
    );
    let up = lab_up["ok"] == true;
    steps.push(lab_up);
    if up {
        steps.extend(profile(scenario, dir));
    }
    steps.push(command_step(
        "lab-down",
        Command::new("netprof").args(["lab", "down", "--lab", LAB]),
        &dir.join("lab-down.log"),
    ));
    steps
}

/// Agents on both nodes, the pings, the agents' stop, and what is left afterwards.
fn profile(scenario: &Scenario, dir: &Path) -> Vec<Value> {
    let mut steps = Vec::new();
    let path = match scenario.path() {
        Ok(path) => path,
        Err(err) => return vec![failed("path", Instant::now(), &err)],
    };
    if scenario.foreign_clsact {
        steps.push(foreign_clsact(scenario, dir));
    }
    // Both agents attach at once: their waits (RCU grace periods, module loads) overlap.
    let started = Instant::now();
    let spawned: Vec<(u32, Result<Pending>)> = [1, 2]
        .map(|node| (node, Agent::spawn(scenario, &path.follow, node, dir)))
        .into_iter()
        .collect();
    let mut agents = Vec::new();
    for (node, agent) in spawned {
        let name = format!("agent{node}-attach");
        match agent.and_then(Agent::attached) {
            Ok(agent) => {
                steps.push(step(&name, started, Ok(String::new())));
                agents.push(agent);
            }
            Err(err) => steps.push(failed(&name, started, &err)),
        }
    }
    if agents.len() == 2 {
        let mut ping = Command::new("ip");
        ping.args(["netns", "exec", &path.client_netns, "ping", "-c"])
            .arg(PINGS.to_string())
            .args(["-i", "0.01", "-W", "1", &path.server_ip]);
        steps.push(command_step("ping", &mut ping, &dir.join("ping.txt")));
        // The last reply's skb is freed right after ping reads it.
        thread::sleep(Duration::from_millis(300));
    }
    // Both stop at once: each waits for RCU grace periods as its links close.
    for agent in &agents {
        agent.terminate();
    }
    for agent in agents {
        steps.push(agent.stop());
    }
    steps.push(leftovers(scenario, dir));
    steps
}

/// The pre-existing clsact qdisc of another tool, with its own filter, on node 2's uplink:
/// the agents must leave both in place.
fn foreign_clsact(scenario: &Scenario, dir: &Path) -> Value {
    let node = scenario.node_netns(2);
    let mut script = Command::new("sh");
    script.arg("-c").arg(format!(
        "set -e; /usr/sbin/tc -n {node} qdisc add dev eno1 clsact; \
         /usr/sbin/tc -n {node} filter add dev eno1 ingress pref 49000 matchall action pass; \
         /usr/sbin/tc -n {node} filter show dev eno1 ingress"
    ));
    command_step(
        "foreign-clsact",
        &mut script,
        &dir.join("foreign-clsact.txt"),
    )
}

/// After the agents: every BPF program and link still loaded (the guest loads none of its
/// own: a filter or TCX link left behind holds a program), each lab namespace's qdiscs (a
/// clsact left behind shows there), and with another tool's clsact, its filters.
fn leftovers(scenario: &Scenario, dir: &Path) -> Value {
    let started = Instant::now();
    let mut text = String::new();
    for netns in scenario.namespaces() {
        text.push_str(&format!("# qdiscs {netns}\n"));
        text.push_str(&capture("tc", &["-n", &netns, "qdisc", "show"]));
    }
    if scenario.foreign_clsact {
        let node = scenario.node_netns(2);
        for direction in ["ingress", "egress"] {
            text.push_str(&format!("# filters {node} eno1 {direction}\n"));
            text.push_str(&capture(
                "tc",
                &["-n", &node, "filter", "show", "dev", "eno1", direction],
            ));
        }
    }
    let result = fs::write(dir.join("tc-after.txt"), text)
        .and_then(|()| {
            fs::write(
                dir.join("programs-after.json"),
                bpftool_json(&["prog", "show"]).to_string(),
            )
        })
        .and_then(|()| {
            fs::write(
                dir.join("links-after.json"),
                bpftool_json(&["link", "show"]).to_string(),
            )
        })
        .map(|()| String::new())
        .map_err(anyhow::Error::from);
    step("leftovers", started, result)
}

/// An agent started but maybe not attached yet.
struct Pending {
    agent: Agent,
    /// Receives once the agent says it attached.
    attached: mpsc::Receiver<()>,
}

/// A running `netprof agent` with its stderr copied to `agentN.log`.
struct Agent {
    node: u32,
    child: Child,
    log_thread: thread::JoinHandle<()>,
}

impl Agent {
    /// Starts `netprof agent` on node `node`; [`Agent::attached`] waits for it to attach.
    fn spawn(scenario: &Scenario, follow: &[String], node: u32, dir: &Path) -> Result<Pending> {
        let mut command = Command::new("netprof");
        command
            .args(["agent", "--netns", &scenario.node_netns(node)])
            .args(["--node", &format!("node{node}"), "--duration", "600"])
            .arg("--out")
            .arg(dir.join(format!("agent{node}.json")))
            .args(follow);
        if scenario.has_pods() {
            command.args(["--pod-netns", &scenario.pod_netns(node)]);
        }
        if let Some(hooks) = scenario.hooks {
            command.args(["--hooks", hooks]);
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run netprof")?;
        let stderr = child.stderr.take().expect("piped");
        let mut log = fs::File::create(dir.join(format!("agent{node}.log")))?;
        let (attached_tx, attached) = mpsc::channel();
        let log_thread = thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if line.contains("netprof agent: attached") {
                    let _ = attached_tx.send(());
                }
            }
        });
        Ok(Pending {
            agent: Self {
                node,
                child,
                log_thread,
            },
            attached,
        })
    }

    /// Waits until `pending` says it attached (or gives up and kills it).
    fn attached(pending: Pending) -> Result<Self> {
        let Pending {
            mut agent,
            attached,
        } = pending;
        if attached.recv_timeout(ATTACH_TIMEOUT).is_ok() {
            return Ok(agent);
        }
        let status = agent.child.try_wait()?;
        let _ = agent.child.kill();
        let _ = agent.child.wait();
        let _ = agent.log_thread.join();
        match status {
            Some(status) => bail!("the agent exited before attaching ({status})"),
            None => bail!("the agent did not attach within {ATTACH_TIMEOUT:?}"),
        }
    }

    /// Asks the agent to stop (SIGTERM: it writes its document and detaches).
    fn terminate(&self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }

    /// Waits for the document and the detach after [`Agent::terminate`].
    fn stop(mut self) -> Value {
        let started = Instant::now();
        let name = format!("agent{}-stop", self.node);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let result = loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => break Ok(String::new()),
                Ok(Some(status)) => break Err(anyhow::anyhow!("the agent exited with {status}")),
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break Err(anyhow::anyhow!(
                        "the agent did not stop within {STOP_TIMEOUT:?}"
                    ));
                }
                Ok(None) => thread::sleep(Duration::from_millis(50)),
                Err(err) => break Err(err.into()),
            }
        };
        let _ = self.log_thread.join();
        step(&name, started, result)
    }
}

/// Runs `command` with stdout and stderr into `log`.
fn command_step(name: &str, command: &mut Command, log: &Path) -> Value {
    let started = Instant::now();
    let result = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))
        .and_then(|out| {
            let mut text = out.stdout;
            text.extend_from_slice(&out.stderr);
            fs::write(log, &text)?;
            if out.status.success() {
                Ok(String::new())
            } else {
                bail!("{} ({}): {}", name, out.status, last_line(&text))
            }
        });
    step(name, started, result)
}

fn last_line(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_owned()
}

fn step(name: &str, started: Instant, result: Result<String>) -> Value {
    let seconds = started.elapsed().as_secs_f64();
    let (ok, detail) = match result {
        Ok(detail) => (true, detail),
        Err(err) => (false, format!("{err:#}")),
    };
    println!(
        "vm-guest:   {name}: {} ({seconds:.1} s){}",
        if ok { "ok" } else { "FAILED" },
        if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        }
    );
    json!({"step": name, "ok": ok, "seconds": seconds, "detail": detail})
}

fn failed(name: &str, started: Instant, err: &anyhow::Error) -> Value {
    step(name, started, Err(anyhow::anyhow!("{err:#}")))
}

/// A command's stdout, or its error as text (a listing is evidence either way).
fn capture(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            text
        }
        Err(err) => format!("cannot run {program}: {err}\n"),
    }
}

fn bpftool_json(args: &[&str]) -> Value {
    let text = capture("bpftool", &[&["-j"], args].concat());
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// The kernel's BTF objects as sysfs lists them (vmlinux and each loaded module's).
fn btf_objects() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/sys/kernel/btf")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
