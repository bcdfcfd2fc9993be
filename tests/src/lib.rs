//! Helpers shared by the integration tests: skip checks, throw-away network namespaces, lab
//! names, the `netprof` binary, and running the tools inside namespaces.
//!
//! Every namespace name is unique (`netprof-t-PID-N-TAG`), and every namespace is deleted when
//! its guard drops, so a failing assertion still cleans up and concurrent runs do not collide.

use std::{
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

/// The in-process fake Kubernetes API server `tests/k8s_run.rs` drives `netprof k8s run` with.
pub mod fake_apiserver;
/// Checks that a test left nothing in the kernel or its namespaces.
pub mod leftovers;

/// Prefix of every namespace the tests create.
pub const NETNS_PREFIX: &str = "netprof-t-";

/// The running kernel's release, e.g. `6.18.44`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// `(major, minor)` of the running kernel, if its release string parses.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = kernel_release();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Why an eBPF integration test cannot run here (`None`: it can): not root, no kernel BTF, or
/// a missing tool.
pub fn ebpf_skip_reason(tools: &[&str]) -> Option<String> {
    if let Err(err) = netprof::ebpf::preflight() {
        return Some(err.to_string());
    }
    tools
        .iter()
        .find(|tool| which(tool).is_none())
        .map(|tool| format!("`{tool}` is not installed"))
}

/// Prints the skip marker `cargo xtask test` counts (`NETPROF-SKIP <test>: <reason>`), with
/// the kernel release. Call it and return from the test. `test` names the test only when this
/// is called from a thread libtest did not name after it.
pub fn print_skip(test: &str, reason: &str) {
    netprof::testing::print_skip(test, &format!("{reason} (kernel {})", kernel_release()));
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// A unique namespace name: `netprof-t-PID-N-TAG`.
pub fn unique_netns_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{NETNS_PREFIX}{}-{}-{tag}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A unique path under the temporary directory (`netprof-TAG-PID-N`), removed with whatever
/// was written there (a file or a directory tree) when dropped, also when the test fails.
#[derive(Debug)]
pub struct TempPath(PathBuf);

impl TempPath {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        Self(std::env::temp_dir().join(format!(
            "netprof-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// The path as text, for command lines.
    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("temporary paths are UTF-8")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let removed = match std::fs::symlink_metadata(&self.0) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&self.0),
            Ok(_) => std::fs::remove_file(&self.0),
            Err(err) => Err(err),
        };
        match removed {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                eprintln!("cleanup: cannot remove {}: {err}", self.0.display())
            }
            _ => {}
        }
    }
}

/// Runs `command`, failing with its stderr unless it exits 0. Returns stdout.
pub fn run(command: &mut Command) -> Result<String> {
    let output = output(command)?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `command` and returns its output whatever the exit status.
pub fn output(command: &mut Command) -> Result<Output> {
    command
        .output()
        .with_context(|| format!("cannot run {command:?}"))
}

/// A network namespace created with `ip netns add`, deleted (with its interfaces) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `netprof-t-PID-N-TAG`.
    pub fn create(tag: &str) -> Result<Self> {
        let name = unique_netns_name(tag);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The `ip netns` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// `ip -n NAME ARGS...`, checked.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `tc ARGS...` inside the namespace, checked.
    pub fn tc(&self, args: &[&str]) -> Result<String> {
        run(self.command("tc").args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cleanup: `ip netns del {}` failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(err) => eprintln!("cleanup: cannot run `ip netns del {}`: {err}", self.name),
        }
    }
}

/// Two namespaces joined by a veth pair named `eno1` on both ends:
/// `a` has 198.18.0.1/24, `b` has 198.18.0.2/24 (benchmarking range, RFC 2544).
#[derive(Debug)]
pub struct VethLab {
    pub a: Netns,
    pub b: Netns,
}

impl VethLab {
    pub const IFACE: &'static str = "eno1";
    pub const ADDR_A: &'static str = "198.18.0.1";
    pub const ADDR_B: &'static str = "198.18.0.2";

    pub fn create() -> Result<Self> {
        let lab = Self {
            a: Netns::create("a")?,
            b: Netns::create("b")?,
        };
        run(Command::new("ip").args([
            "link",
            "add",
            Self::IFACE,
            "netns",
            lab.a.name(),
            "type",
            "veth",
            "peer",
            "name",
            Self::IFACE,
            "netns",
            lab.b.name(),
        ]))?;
        for (ns, addr) in [(&lab.a, Self::ADDR_A), (&lab.b, Self::ADDR_B)] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", Self::IFACE])?;
            ns.ip(&["link", "set", Self::IFACE, "up"])?;
        }
        Ok(lab)
    }
}

/// A program attached to an interface hook, as the kernel or bpftool reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    /// `tcx/ingress`, `tcx/egress`, `clsact/ingress`, ...
    pub kind: String,
    pub name: String,
    pub id: u32,
}

/// Programs on the TCX hooks of `iface` in `ns`, straight from the kernel (`BPF_PROG_QUERY`
/// with `BPF_TCX_INGRESS`/`EGRESS`). bpftool before 7.3 does not list TCX at all.
pub fn tcx_programs(ns: &Netns, iface: &str) -> Result<Vec<AttachedProgram>> {
    use aya::programs::{SchedClassifier, TcAttachType};
    netprof::netns::run_in(ns.name(), || {
        let mut programs = Vec::new();
        for (attach_type, kind) in [
            (TcAttachType::Ingress, "tcx/ingress"),
            (TcAttachType::Egress, "tcx/egress"),
        ] {
            let (_revision, infos) = SchedClassifier::query_tcx(iface, attach_type)
                .with_context(|| format!("BPF_PROG_QUERY {kind} on {iface}"))?;
            programs.extend(infos.iter().map(|info| AttachedProgram {
                kind: kind.to_owned(),
                name: info.name_as_str().unwrap_or_default().to_owned(),
                id: info.id(),
            }));
        }
        Ok(programs)
    })?
}

/// What `bpftool net show dev IFACE` reports in its `tc` section: cls_bpf filters, and with
/// bpftool >= 7.3 TCX links too.
pub fn bpftool_tc_programs(ns: &Netns, iface: &str) -> Result<Vec<AttachedProgram>> {
    let json = run(ns
        .command("bpftool")
        .args(["-j", "net", "show", "dev", iface]))?;
    let value: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("bpftool output: {json}"))?;
    let mut programs = Vec::new();
    for section in value.as_array().into_iter().flatten() {
        for entry in section["tc"].as_array().into_iter().flatten() {
            programs.push(AttachedProgram {
                kind: entry["kind"].as_str().unwrap_or_default().to_owned(),
                name: entry["name"].as_str().unwrap_or_default().to_owned(),
                id: entry["id"].as_u64().unwrap_or_default() as u32,
            });
        }
    }
    Ok(programs)
}

/// Everything attached to the tc hooks of `iface`: the kernel's TCX list plus bpftool's view
/// (cls_bpf filters), without duplicates.
pub fn tc_hook_programs(ns: &Netns, iface: &str) -> Result<Vec<AttachedProgram>> {
    let mut programs = tcx_programs(ns, iface)?;
    for program in bpftool_tc_programs(ns, iface)? {
        if !programs.iter().any(|p| p.id == program.id) {
            programs.push(program);
        }
    }
    Ok(programs)
}

/// Waits (up to [`leftovers::RELEASE_DEADLINE`]: freeing is RCU-deferred) for the kernel to
/// free program `id`; `true` once it is gone. A failed listing is an error.
pub fn program_unloaded(id: u32) -> Result<bool> {
    let loaded = leftovers::poll(
        leftovers::RELEASE_DEADLINE,
        leftovers::loaded_program_ids,
        |ids| !ids.contains(&id),
    )?;
    Ok(!loaded.contains(&id))
}

/// Whether `tc qdisc show dev IFACE` lists a clsact qdisc.
pub fn has_clsact(ns: &Netns, iface: &str) -> Result<bool> {
    Ok(ns
        .tc(&["qdisc", "show", "dev", iface])?
        .lines()
        .any(|l| l.starts_with("qdisc clsact")))
}

/// Pings `dest` from `ns` `count` times, 10 ms apart; returns ping's summary line.
pub fn ping(ns: &Netns, dest: &str, count: u32) -> Result<String> {
    let count = count.to_string();
    let out = run(ns
        .command("ping")
        .args(["-c", &count, "-i", "0.01", "-W", "1", dest]))?;
    Ok(out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default()
        .to_owned())
}

// ---- lab and CLI tests ----

/// Prints a visible skip line and returns true when the test cannot run here.
pub fn skip_unless_kernel_ready(test: &str) -> bool {
    match ebpf_skip_reason(&[]) {
        Some(reason) => {
            print_skip(test, &reason);
            true
        }
        None => false,
    }
}

/// Removes a lab (`lab::down`) when dropped. A failed removal fails the test, unless the
/// test is already failing: then it is printed, since a second panic would abort.
#[derive(Debug)]
pub struct LabCleanup(pub netprof::lab::LabNames);

impl Drop for LabCleanup {
    fn drop(&mut self) {
        if let Err(err) = netprof::lab::down(&self.0) {
            let message = format!("cannot remove lab {}: {err}", self.0.lab());
            if std::thread::panicking() {
                eprintln!("{message}");
            } else {
                panic!("{message}");
            }
        }
    }
}

/// Journeys an agent admitted that have not ended yet (completed, dropped or abandoned).
pub fn journeys_in_flight(report: &netprof::agent::AgentReport) -> u64 {
    let c = &report.counters;
    c.admitted
        .saturating_sub(c.completed + c.dropped + c.abandoned)
}

/// How long the last journeys may take to end after the traffic stops (the last reply's skb
/// is freed just after the client reads it). Milliseconds in practice; polled, not slept.
pub const SETTLE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long an agent's counters must stay unchanged for its journeys to count as settled when
/// some never end in its view (a TCP skb kept in a socket's queue, a journey abandoned).
const SETTLE_QUIET: std::time::Duration = std::time::Duration::from_millis(250);

/// `snapshot()` polled until every admitted journey has ended, or the counters have not moved
/// for [`SETTLE_QUIET`], up to [`SETTLE_DEADLINE`]; the last snapshot either way (the
/// caller's exact asserts say what is missing).
pub fn settled(
    mut snapshot: impl FnMut() -> Result<netprof::agent::AgentReport>,
) -> Result<netprof::agent::AgentReport> {
    use std::time::Instant;
    let deadline = Instant::now() + SETTLE_DEADLINE;
    let mut report = snapshot()?;
    let mut quiet_since = Instant::now();
    while journeys_in_flight(&report) > 0
        && quiet_since.elapsed() < SETTLE_QUIET
        && Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let next = snapshot()?;
        if next.counters != report.counters {
            quiet_since = Instant::now();
        }
        report = next;
    }
    let left = journeys_in_flight(&report);
    if left > 0 {
        println!(
            "{left} journeys still in flight in the settled snapshot: {:?}",
            report.counters
        );
    }
    Ok(report)
}

/// A lab name no other test (or user) has: `it<pid>-<n>`.
pub fn unique_lab_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "it{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// The `netprof` binary next to the test executable (`cargo xtask test` builds it first).
pub fn netprof_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join("netprof");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// `iptables-save` of the root namespace (what the lab must never change), without comments
/// and counters. Panics if `iptables-save` fails: an empty string would compare equal to
/// another failure.
pub fn root_iptables() -> String {
    leftovers::iptables_rules(None).expect("iptables-save in the root namespace")
}

// ---- datapath checkpoint tests: kernel offsets, namespaces, maps ----

/// The members of the kernel's BTF types, parsed from `bpftool btf dump file
/// /sys/kernel/btf/vmlinux format raw`, to find struct member offsets the way the agent will
/// (from BTF, not hard-coded). Only what offset lookups need is kept.
#[derive(Debug, Default)]
pub struct KernelBtf {
    /// id -> type.
    types: std::collections::HashMap<u32, BtfType>,
    /// Struct name -> ids of the STRUCT types with that name.
    structs: std::collections::HashMap<String, Vec<u32>>,
}

#[derive(Debug, Default)]
struct BtfType {
    kind: String,
    /// `type_id=` of TYPEDEF, CONST, VOLATILE, RESTRICT, TYPE_TAG.
    target: Option<u32>,
    /// (name, type id, bit offset) of STRUCT/UNION members.
    members: Vec<(String, u32, u32)>,
}

impl KernelBtf {
    /// Parses the running kernel's BTF with bpftool.
    pub fn load() -> Result<Self> {
        let text = run(Command::new("bpftool").args([
            "btf",
            "dump",
            "file",
            "/sys/kernel/btf/vmlinux",
            "format",
            "raw",
        ]))?;
        Ok(Self::parse(&text))
    }

    /// Parses bpftool's raw dump: `[ID] KIND 'name' key=value...` lines, STRUCT/UNION members
    /// on tab-indented lines `'name' type_id=N bits_offset=N`.
    pub fn parse(text: &str) -> Self {
        fn field(line: &str, key: &str) -> Option<u32> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
        }
        let mut btf = Self::default();
        let mut current: Option<u32> = None;
        for line in text.lines() {
            if let Some(member) = line.strip_prefix('\t') {
                let (Some(id), Some(name)) = (current, member.split('\'').nth(1)) else {
                    continue;
                };
                if let (Some(type_id), Some(bits)) =
                    (field(member, "type_id="), field(member, "bits_offset="))
                {
                    if let Some(ty) = btf.types.get_mut(&id) {
                        ty.members.push((name.to_owned(), type_id, bits));
                    }
                }
                continue;
            }
            current = None;
            let Some(rest) = line.strip_prefix('[') else {
                continue;
            };
            let Some((id, rest)) = rest.split_once("] ") else {
                continue;
            };
            let Ok(id) = id.parse::<u32>() else { continue };
            let kind = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            let name = rest.split('\'').nth(1).unwrap_or_default().to_owned();
            if kind == "STRUCT" {
                btf.structs.entry(name).or_default().push(id);
            }
            let target = match kind.as_str() {
                "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG" => {
                    field(rest, "type_id=")
                }
                _ => None,
            };
            btf.types.insert(
                id,
                BtfType {
                    kind,
                    target,
                    members: Vec::new(),
                },
            );
            current = Some(id);
        }
        btf
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.types.get(&id).and_then(|t| t.target) {
                Some(next) => id = next,
                None => break,
            }
        }
        id
    }

    /// Byte offset and type id of member `name` of STRUCT/UNION `id`, looking into anonymous
    /// struct/union members.
    fn member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let ty = self.types.get(&self.resolve(id))?;
        for (member, type_id, bits) in &ty.members {
            if member == name {
                return Some((bits / 8, *type_id));
            }
        }
        for (member, type_id, bits) in &ty.members {
            let inner = self.types.get(&self.resolve(*type_id))?;
            if member == "(anon)" && (inner.kind == "STRUCT" || inner.kind == "UNION") {
                if let Some((offset, found)) = self.member(*type_id, name) {
                    return Some((bits / 8 + offset, found));
                }
            }
        }
        None
    }

    /// Byte offset of `path` (`"nd_net.net"`) inside `struct name`.
    pub fn offset_of(&self, name: &str, path: &str) -> Result<u32> {
        let ids = self
            .structs
            .get(name)
            .with_context(|| format!("no struct {name} in the kernel BTF"))?;
        'candidates: for &id in ids {
            let (mut offset, mut current) = (0, id);
            for part in path.split('.') {
                match self.member(current, part) {
                    Some((at, type_id)) => {
                        offset += at;
                        current = type_id;
                    }
                    None => continue 'candidates,
                }
            }
            return Ok(offset);
        }
        bail!("struct {name} has no member {path} in the kernel BTF")
    }
}

/// Byte offset of `field` in tracepoint `group:event`, from tracefs's `format` file.
pub fn tracepoint_field_offset(group: &str, event: &str, field: &str) -> Result<u32> {
    let path = format!("/sys/kernel/tracing/events/{group}/{event}/format");
    let format = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    for line in format.lines() {
        // `\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;`
        let mut parts = line.trim().split(';');
        let Some(decl) = parts.next().and_then(|d| d.strip_prefix("field:")) else {
            continue;
        };
        let name = decl
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .split('[')
            .next()
            .unwrap_or_default();
        if name != field {
            continue;
        }
        if let Some(offset) = parts.find_map(|p| p.trim().strip_prefix("offset:")) {
            return Ok(offset.parse()?);
        }
    }
    bail!("{path} has no field {field}")
}

/// The inode number of namespace `ns` (`struct net`'s `ns.inum`).
pub fn netns_inum(ns: &Netns) -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/run/netns/{}", ns.name());
    Ok(std::fs::metadata(&path)
        .with_context(|| format!("cannot stat {path}"))?
        .ino() as u32)
}

/// The ifindex of `iface` in `ns`.
pub fn ifindex(ns: &Netns, iface: &str) -> Result<u32> {
    let json = ns.ip(&["-j", "link", "show", iface])?;
    let value: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("ip -j output: {json}"))?;
    value[0]["ifindex"]
        .as_u64()
        .map(|i| i as u32)
        .with_context(|| format!("no ifindex in {json}"))
}

/// The fds of the named maps of an aya `Ebpf`, to lend them to the netfilter loader.
pub fn aya_map_fds<'a>(
    ebpf: &'a aya::Ebpf,
    names: &[&str],
) -> Result<std::collections::HashMap<String, std::os::fd::BorrowedFd<'a>>> {
    let mut fds = std::collections::HashMap::new();
    for name in names {
        let map = ebpf
            .map(name)
            .with_context(|| format!("map {name} is not in the object"))?;
        let fd = netprof::agent::attach::map_fd(map)
            .with_context(|| format!("map {name} has a type the netfilter loader cannot share"))?;
        fds.insert((*name).to_owned(), fd);
    }
    Ok(fds)
}

/// What `bpftool prog show id ID` reports: name, translated instructions, map ids.
#[derive(Debug, Clone)]
pub struct ProgramInfo {
    pub id: u32,
    pub name: String,
    pub kind: String,
    pub xlated_insns: u64,
    pub jited_bytes: u64,
    pub map_ids: Vec<u32>,
}

/// `bpftool -j prog show id ID`.
pub fn bpftool_program(id: u32) -> Result<ProgramInfo> {
    let json = run(Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]))?;
    let v: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("bpftool output: {json}"))?;
    Ok(ProgramInfo {
        id,
        name: v["name"].as_str().unwrap_or_default().to_owned(),
        kind: v["type"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v["type"].to_string()),
        xlated_insns: v["bytes_xlated"].as_u64().unwrap_or_default() / 8,
        jited_bytes: v["bytes_jited"].as_u64().unwrap_or_default(),
        map_ids: v["map_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_u64().map(|m| m as u32))
            .collect(),
    })
}

/// The kernel's number for drop reason `name` (`enum skb_drop_reason`, e.g. `NO_SOCKET`), from
/// the `__print_symbolic` table in tracefs's `skb/kfree_skb/format`.
pub fn kfree_skb_reason(name: &str) -> Result<u32> {
    let path = "/sys/kernel/tracing/events/skb/kfree_skb/format";
    let format = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let needle = format!(", \"{name}\" }}");
    let end = format
        .find(&needle)
        .with_context(|| format!("{path} has no drop reason {name}"))?;
    let start = format[..end].rfind('{').context("malformed print fmt")? + 1;
    Ok(format[start..end].trim().parse()?)
}

/// netprof's programs (named `cp_*` or `nf_h*`) the kernel has loaded now, as (id, name).
/// Panics if the kernel's program list cannot be read.
/// How many netprof programs are loaded once the count is back to `before`, or after
/// `leftovers::RELEASE_DEADLINE` if it never gets there: a process that exited frees its
/// programs after an RCU grace period, not at once.
pub fn settled_netprof_program_count(before: usize) -> usize {
    leftovers::poll(
        leftovers::RELEASE_DEADLINE,
        || Ok(loaded_netprof_programs().len()),
        |count| *count == before,
    )
    .unwrap_or(usize::MAX)
}

pub fn loaded_netprof_programs() -> Vec<(u32, String)> {
    let mut programs = Vec::new();
    for info in aya::programs::loaded_programs() {
        let info = match info {
            Ok(info) => info,
            // Freed between listing its id and opening it.
            Err(aya::programs::ProgramError::SyscallError(err))
                if err.io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(err) => panic!("listing the kernel's BPF programs: {err}"),
        };
        let name = info.name_as_str().unwrap_or_default().to_owned();
        if name.starts_with("cp_") || name.starts_with("nf_") {
            programs.push((info.id(), name));
        }
    }
    programs
}

/// Why a netfilter-program test cannot run here: [`ebpf_skip_reason`], or a kernel before 6.4
/// (no BPF_PROG_TYPE_NETFILTER). Prints the skip line and returns true when it cannot.
pub fn skip_netfilter_test(test: &str, tools: &[&str]) -> bool {
    let reason = ebpf_skip_reason(tools).or_else(|| match kernel_version() {
        Some(v) if v < (6, 4) => {
            Some("kernel < 6.4 has no BPF_PROG_TYPE_NETFILTER programs and links".to_owned())
        }
        _ => None,
    });
    match reason {
        Some(reason) => {
            print_skip(test, &reason);
            true
        }
        None => false,
    }
}

impl VethLab {
    /// A [`VethLab`] whose two namespaces have IPv6 off: no router solicitations or MLD, so
    /// exact packet counts hold.
    pub fn create_quiet() -> Result<Self> {
        let lab = Self::create()?;
        for ns in [&lab.a, &lab.b] {
            for key in [
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ] {
                run(ns.command("sysctl").args(["-q", "-w", key]))?;
            }
        }
        Ok(lab)
    }
}
