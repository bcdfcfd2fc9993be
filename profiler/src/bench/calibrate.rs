//! netprof's in-path cost, measured rather than estimated (`netprof overhead --calibrate DIR`,
//! written to `DIR/calibration-<ms>ms.json`, which `netprof report` reads).
//!
//! On one lab, every round runs three variants, the order rotating each round so the machine's
//! drift hits all alike:
//! - `off`: no program attached;
//! - `paused`: netprof's programs at the same hooks and priorities, held (each returns right
//!   after reading its configuration: the hook's dispatch and one array read);
//! - `netprof`: the programs following the benchmark's flows, with bpf_stats as profiled steps
//!   run them (in slices, `StatsMode::Slices`), since the segments the calibration corrects were
//!   measured that way; `--no-stats` calibrates without them.
//!
//! Each variant measures the RTT p50 of followed pings (pod to pod, at the ping step's rate),
//! of untracked pings (node to node: the same uplink and netfilter hooks, never followed), and
//! the machine's CPU time per request under ab. A round's pings run in blocks that alternate
//! between the variants (`bench::ping_blocks`), so a stretch of a slower machine falls on all.
//! Within a round, `paused - off` is the dispatch and `netprof - paused` the programs' bodies;
//! their medians over rounds carry bootstrap intervals.
//!
//! Per checkpoint kind, the runs per RTT come from a counting pass before the rounds (netprof
//! with bpf_stats on, not timed): followed runs from the checkpoints' hits, untracked runs from
//! the programs' run counts. The dispatch is shared evenly per run; the body in proportion to
//! each kind's bpf_stats run time. The totals are measured; only their split among kinds leans
//! on bpf_stats.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::PathBuf;

use serde::Serialize;

use super::bootstrap::median_interval;
use super::config::BenchConfig;
use super::overhead::median;
use super::ping_blocks;
use super::{servers, tools, BenchError};
use crate::agent::report::{AgentReport, ProgramStats};
use crate::agent::HookFamilies;
use crate::lab::{addressing, Lab, Node};
use crate::parse::ping::PingReport;
use crate::report::calibration::{CalibrationRatios, Interval, SCHEMA};
use crate::report::overhead::program_kind;

/// The goals for a run on a followed packet and on any other packet, ns of RTT: a small
/// fraction of the smallest stage a checkpoint brackets.
pub const FOLLOWED_TARGET_NS: f64 = 80.0;
pub const UNTRACKED_TARGET_NS: f64 = 25.0;

/// The goal for the followed ping's p50 with netprof against the same lab without it.
pub const PING_RATIO_TARGET: f64 = 1.15;

/// The checkpoint kind of journeys' ends.
const CONSUMED: &str = "consumed";

/// Pings of the counting pass (per kind of traffic).
const COUNTING_PINGS: u32 = 100;

/// Blocks each variant's pings of a round are split into. Fewer than the validation's: a
/// block that follows `off` attaches the agents anew (about a second).
const PING_BLOCKS: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    Off,
    Paused,
    Netprof,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Off, Variant::Paused, Variant::Netprof];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Off => "off",
            Variant::Paused => "paused",
            Variant::Netprof => "netprof",
        }
    }
}

/// One variant's measurement in one round.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RoundSample {
    pub round: u32,
    pub variant: Variant,
    pub followed_p50_ns: f64,
    pub untracked_p50_ns: f64,
    pub cpu_ns_per_request: Option<f64>,
}

/// One kind's program runs per RTT and their bpf_stats run time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KindRuns {
    pub runs_per_rtt: f64,
    /// bpf_stats' mean run time (0 when it counted none).
    pub stats_ns_per_run: f64,
}

/// What the counting pass found, per kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunCounts {
    pub followed: BTreeMap<String, KindRuns>,
    pub untracked: BTreeMap<String, KindRuns>,
}

/// One kind's cost per run (the fields a calibration file holds under `per_run`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KindCost {
    pub followed_ns: Interval,
    pub untracked_ns: Interval,
    pub dispatch_ns: Interval,
}

/// A calibration file (`netprof.calibration/v1`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationDoc {
    pub schema: &'static str,
    pub mode: String,
    pub kernel: String,
    pub rounds: u32,
    pub ping_interval_s: f64,
    /// What the CPUs did between packets (see `bench::cpu_idle`).
    pub cpu_idle: super::cpu_idle::CpuIdle,
    /// bpf_stats' share of the time in the `paused` and `netprof` variants, percent (0: off).
    pub stats_share: u32,
    pub per_run: BTreeMap<String, KindCost>,
    /// Followed ping p50, netprof - off.
    pub rtt_shift_ns: Interval,
    /// Followed ping p50, paused - off and netprof - paused.
    pub dispatch_rtt_ns: Interval,
    pub body_rtt_ns: Interval,
    /// Untracked ping p50, netprof - off.
    pub untracked_rtt_shift_ns: Interval,
    /// Machine CPU per ab request, paused - off and netprof - paused (absent without
    /// /proc/stat).
    pub cpu_dispatch_ns_per_request: Option<Interval>,
    pub cpu_body_ns_per_request: Option<Interval>,
    /// Over every kind: RTT shift / runs per RTT.
    pub followed_ns_per_run: Interval,
    pub untracked_ns_per_run: Interval,
    /// Each variant against `off`, as ratios (absent when no round paired them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratios: Option<CalibrationRatios>,
    pub runs: RunCounts,
    pub samples: Vec<RoundSample>,
}

/// Per round, `field(later) - field(earlier)` where both were measured.
pub fn paired(
    samples: &[RoundSample],
    earlier: Variant,
    later: Variant,
    field: fn(&RoundSample) -> Option<f64>,
) -> Vec<f64> {
    per_round(samples, earlier, later, field, |later, earlier| {
        Some(later - earlier)
    })
}

/// `later / earlier`, for [`per_round`]; none when `earlier` is not above zero.
pub fn ratio(later: f64, earlier: f64) -> Option<f64> {
    (earlier > 0.0).then(|| later / earlier)
}

/// Per round, `combine(field(later), field(earlier))` where both were measured.
pub fn per_round(
    samples: &[RoundSample],
    earlier: Variant,
    later: Variant,
    field: fn(&RoundSample) -> Option<f64>,
    combine: fn(f64, f64) -> Option<f64>,
) -> Vec<f64> {
    let rounds: Vec<u32> = {
        let mut r: Vec<u32> = samples.iter().map(|s| s.round).collect();
        r.dedup();
        r
    };
    rounds
        .into_iter()
        .filter_map(|round| {
            let of = |v: Variant| {
                samples
                    .iter()
                    .find(|s| s.round == round && s.variant == v)
                    .and_then(field)
            };
            combine(of(later)?, of(earlier)?)
        })
        .collect()
}

/// A median with its 95% bootstrap interval (the median alone under three values).
pub fn interval_of(values: &[f64]) -> Interval {
    let mut sorted = values.to_vec();
    let m = median(&mut sorted);
    match median_interval(values) {
        Some((lo, hi)) => Interval {
            median: m,
            lo: lo.min(m),
            hi: hi.max(m),
        },
        None => Interval::point(m),
    }
}

/// A cost cannot be below zero: a shift under the machine's resolution reads as 0.
fn at_least_zero(i: Interval) -> Interval {
    Interval {
        median: i.median.max(0.0),
        lo: i.lo.max(0.0),
        hi: i.hi.max(0.0),
    }
}

/// Per kind: the dispatch total shared evenly per run, the body total in proportion to each
/// kind's bpf_stats run time (evenly when bpf_stats counted nothing). Returns per kind
/// (dispatch per run, dispatch + body per run).
pub fn per_kind(
    dispatch: Interval,
    body: Interval,
    runs: &BTreeMap<String, KindRuns>,
) -> BTreeMap<String, (Interval, Interval)> {
    let total_runs: f64 = runs.values().map(|k| k.runs_per_rtt).sum();
    if total_runs <= 0.0 {
        return BTreeMap::new();
    }
    let weighted: f64 = runs
        .values()
        .map(|k| k.runs_per_rtt * k.stats_ns_per_run)
        .sum();
    runs.iter()
        .map(|(kind, k)| {
            let dispatch_per_run = dispatch.scaled(1.0 / total_runs);
            let body_per_run = if weighted > 0.0 {
                body.scaled(k.stats_ns_per_run / weighted)
            } else {
                body.scaled(1.0 / total_runs)
            };
            (
                kind.clone(),
                (
                    at_least_zero(dispatch_per_run),
                    at_least_zero(dispatch_per_run.plus(body_per_run)),
                ),
            )
        })
        .collect()
}

/// Runs per RTT per kind from the checkpoints' hits of both agents over `pings` pings.
pub fn followed_runs(reports: &[AgentReport], pings: u32) -> BTreeMap<String, f64> {
    let mut runs: BTreeMap<String, f64> = BTreeMap::new();
    for report in reports {
        for cp in &report.checkpoints {
            // A journey's end runs a tracer whether the skb is consumed or freed as a drop (a
            // raw socket's ping gets a clone; the original is freed with a reason).
            let hits = if cp.kind == CONSUMED {
                report.counters.completed + report.counters.dropped
            } else {
                cp.hits
            };
            *runs.entry(cp.kind.clone()).or_default() += hits as f64 / f64::from(pings);
        }
    }
    runs.retain(|_, r| *r > 0.0);
    runs
}

/// Per kind, (runs, run time ns) between two snapshots' program statistics of one agent.
pub fn program_deltas(
    before: &[ProgramStats],
    after: &[ProgramStats],
) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for p in after {
        let Some(kind) = program_kind(&p.name) else {
            continue;
        };
        let (count0, time0) = before
            .iter()
            .find(|b| b.id == p.id)
            .map_or((0, 0), |b| (b.run_count, b.run_time_ns));
        let entry = out.entry(kind.to_owned()).or_default();
        entry.0 += p.run_count.saturating_sub(count0);
        entry.1 += p.run_time_ns.saturating_sub(time0);
    }
    out
}

/// Runs per RTT and bpf_stats' ns per run from summed program deltas over `pings` pings.
pub fn kind_runs(
    deltas: &BTreeMap<String, (u64, u64)>,
    runs_per_rtt: Option<&BTreeMap<String, f64>>,
    pings: u32,
) -> BTreeMap<String, KindRuns> {
    deltas
        .iter()
        .filter_map(|(kind, &(count, time))| {
            let counted = count as f64 / f64::from(pings);
            let runs = runs_per_rtt.map_or(counted, |r| r.get(kind).copied().unwrap_or(0.0));
            (runs > 0.0).then(|| {
                (
                    kind.clone(),
                    KindRuns {
                        runs_per_rtt: runs,
                        stats_ns_per_run: if count > 0 {
                            time as f64 / count as f64
                        } else {
                            0.0
                        },
                    },
                )
            })
        })
        .collect()
}

/// The document from the rounds and the counting pass.
pub fn document(
    lab: &Lab,
    cfg: &BenchConfig,
    rounds: u32,
    stats: StatsMode,
    runs: RunCounts,
    samples: Vec<RoundSample>,
) -> CalibrationDoc {
    let followed = |s: &RoundSample| Some(s.followed_p50_ns);
    let untracked = |s: &RoundSample| Some(s.untracked_p50_ns);
    let cpu = |s: &RoundSample| s.cpu_ns_per_request;
    let diff = |a, b, f| interval_of(&paired(&samples, a, b, f));
    let (off, paused, netprof) = (Variant::Off, Variant::Paused, Variant::Netprof);
    let dispatch = diff(off, paused, followed);
    let body = diff(paused, netprof, followed);
    let untracked_dispatch = diff(off, paused, untracked);
    let untracked_body = diff(paused, netprof, untracked);
    let cpu_pair = |a, b| {
        let d = paired(&samples, a, b, cpu);
        (!d.is_empty()).then(|| interval_of(&d))
    };
    let followed_costs = per_kind(dispatch, body, &runs.followed);
    let untracked_costs = per_kind(untracked_dispatch, untracked_body, &runs.untracked);
    let mut per_run = BTreeMap::new();
    for (kind, (dispatch_ns, followed_ns)) in &followed_costs {
        let untracked_ns = untracked_costs
            .get(kind)
            .map_or(Interval::point(0.0), |c| c.1);
        per_run.insert(
            kind.clone(),
            KindCost {
                followed_ns: *followed_ns,
                untracked_ns,
                dispatch_ns: *dispatch_ns,
            },
        );
    }
    let pooled = |shift: Interval, runs: &BTreeMap<String, KindRuns>| {
        let total: f64 = runs.values().map(|k| k.runs_per_rtt).sum();
        if total > 0.0 {
            shift.scaled(1.0 / total)
        } else {
            Interval::point(0.0)
        }
    };
    let rtt_shift = diff(off, netprof, followed);
    let untracked_shift = diff(off, netprof, untracked);
    let ratio = |v, f| {
        let r = per_round(&samples, off, v, f, ratio);
        (!r.is_empty()).then(|| interval_of(&r))
    };
    let ratios = match (ratio(paused, followed), ratio(netprof, followed)) {
        (Some(held_rtt), Some(netprof_rtt)) => Some(CalibrationRatios {
            held_rtt,
            netprof_rtt,
            held_cpu: ratio(paused, cpu),
            netprof_cpu: ratio(netprof, cpu),
        }),
        _ => None,
    };
    CalibrationDoc {
        schema: SCHEMA,
        mode: lab.mode().to_string(),
        kernel: crate::kernel_release(),
        rounds,
        ping_interval_s: cfg.ping_interval_s,
        cpu_idle: cfg.cpu_idle,
        stats_share: stats.share(),
        per_run,
        rtt_shift_ns: rtt_shift,
        dispatch_rtt_ns: dispatch,
        body_rtt_ns: body,
        untracked_rtt_shift_ns: untracked_shift,
        cpu_dispatch_ns_per_request: cpu_pair(off, paused),
        cpu_body_ns_per_request: cpu_pair(paused, netprof),
        followed_ns_per_run: pooled(rtt_shift, &runs.followed),
        untracked_ns_per_run: pooled(untracked_shift, &runs.untracked),
        ratios,
        runs,
        samples,
    }
}

impl CalibrationDoc {
    /// What an engineer reads: the shifts, the per-run costs with the targets, per kind.
    pub fn render(&self) -> String {
        let i = |v: Interval| format!("{:.0} ns [{:.0}, {:.0}]", v.median, v.lo, v.hi);
        let verdict = |v: Interval, target: f64| {
            if v.hi <= target {
                "met"
            } else if v.lo > target {
                "missed"
            } else {
                "unresolved (the interval holds the target)"
            }
        };
        let mut out = format!(
            "calibration on {} (kernel {}), {} rounds, pings every {} ms, CPUs idle {}, bpf_stats \
             on {}% of the time\n",
            self.mode,
            self.kernel,
            self.rounds,
            self.ping_interval_s * 1e3,
            self.cpu_idle,
            self.stats_share
        );
        out += &format!(
            "  followed ping p50: netprof - off {}  (dispatch {}, bodies {})\n",
            i(self.rtt_shift_ns),
            i(self.dispatch_rtt_ns),
            i(self.body_rtt_ns)
        );
        out += &format!(
            "  untracked ping p50: netprof - off {}\n",
            i(self.untracked_rtt_shift_ns)
        );
        if let (Some(d), Some(b)) = (
            self.cpu_dispatch_ns_per_request,
            self.cpu_body_ns_per_request,
        ) {
            out += &format!("  CPU per ab request: dispatch {}, bodies {}\n", i(d), i(b));
        }
        if let Some(ratios) = &self.ratios {
            out += &render_ratios(ratios, verdict);
        }
        out += &format!(
            "  per run, followed: {} (target <= {FOLLOWED_TARGET_NS} ns: {})\n",
            i(self.followed_ns_per_run),
            verdict(self.followed_ns_per_run, FOLLOWED_TARGET_NS)
        );
        out += &format!(
            "  per run, untracked: {} (target <= {UNTRACKED_TARGET_NS} ns: {})\n",
            i(self.untracked_ns_per_run),
            verdict(self.untracked_ns_per_run, UNTRACKED_TARGET_NS)
        );
        for (kind, c) in &self.per_run {
            let runs = self.runs.followed.get(kind).map_or(0.0, |k| k.runs_per_rtt);
            out += &format!(
                "    {kind:<11} {runs:>5.1} runs/RTT  followed {}  untracked {}  dispatch {}\n",
                i(c.followed_ns),
                i(c.untracked_ns),
                i(c.dispatch_ns)
            );
        }
        out
    }
}

/// bpf_stats while a calibration's agents run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsMode {
    /// On throughout (the counting pass, which reads run counts and times).
    Throughout,
    /// On for this percentage of every second, as profiled steps run them.
    Slices(u32),
    Off,
}

impl StatsMode {
    /// The percentage of time bpf_stats are on (what a calibration file records).
    pub fn share(self) -> u32 {
        match self {
            StatsMode::Throughout => 100,
            StatsMode::Slices(share) => share,
            StatsMode::Off => 0,
        }
    }
}

/// How the rounds get at the agents: start them (with bpf_stats as `stats` says), hold or
/// release their programs, snapshot them; dropping the value detaches them.
pub trait CalibrationAgents: Sized {
    /// Agents following the pod path's flows with these `hooks`, bpf_stats as `stats` says.
    fn start(lab: &Lab, stats: StatsMode, hooks: HookFamilies) -> Result<Self, BenchError>;
    fn hold(&self, held: bool) -> Result<(), BenchError>;
    fn snapshots(&self) -> Result<Vec<AgentReport>, BenchError>;
    fn reset(&self) -> Result<(), BenchError>;
}

/// Followed pings, untracked pings and ab on `lab`.
struct Probe<'a> {
    lab: &'a Lab,
    cfg: &'a BenchConfig,
}

impl Probe<'_> {
    fn tool_err(&self, step: &str) -> impl FnOnce(tools::ToolError) -> BenchError {
        let (mode, step) = (self.lab.mode(), format!("calibration: {step}"));
        move |source| BenchError::Tool { mode, step, source }
    }

    async fn followed(&self, cfg: &BenchConfig) -> Result<PingReport, BenchError> {
        let path = self.lab.pod_path().unwrap_or_else(|| self.lab.host_path());
        tools::ping(&path.client_netns, path.server_ip, cfg)
            .await
            .map_err(self.tool_err("followed ping"))
    }

    async fn untracked(&self, cfg: &BenchConfig) -> Result<PingReport, BenchError> {
        let names = &self.lab.names;
        tools::ping(&names.node(Node::One), addressing::node_ip(Node::Two), cfg)
            .await
            .map_err(self.tool_err("untracked ping"))
    }

    async fn cpu_per_request(&self) -> Result<Option<f64>, BenchError> {
        let path = self.lab.pod_path().unwrap_or_else(|| self.lab.host_path());
        let target = SocketAddrV4::new(path.server_ip, 80);
        let (_, cpu) = tools::ab_with_cpu(&path.http_client_netns, target, self.cfg)
            .await
            .map_err(self.tool_err("ab"))?;
        Ok(cpu)
    }
}

fn p50_ns(ping: &PingReport, what: &str) -> Result<f64, tools::ToolError> {
    ping.stats
        .map(|s| s.p50_ms * 1e6)
        .ok_or_else(|| tools::ToolError::NoReply {
            what: what.to_owned(),
        })
}

/// Puts the agents in `variant`'s state: detached for `off`, attached and held or released.
fn set_variant<A: CalibrationAgents>(
    agents: &mut Option<A>,
    lab: &Lab,
    variant: Variant,
    stats: StatsMode,
    hooks: HookFamilies,
) -> Result<(), BenchError> {
    match variant {
        Variant::Off => *agents = None,
        Variant::Paused | Variant::Netprof => {
            if agents.is_none() {
                *agents = Some(A::start(lab, stats, hooks)?);
            }
            if let Some(a) = agents {
                a.hold(variant == Variant::Paused)?;
            }
        }
    }
    Ok(())
}

/// The counting pass: netprof with bpf_stats on throughout, `COUNTING_PINGS` followed then
/// untracked pings, runs per kind from the hits and the programs' run counts.
async fn count_runs<A: CalibrationAgents>(
    probe: &Probe<'_>,
    cfg: &BenchConfig,
    hooks: HookFamilies,
) -> Result<RunCounts, BenchError> {
    let agents = A::start(probe.lab, StatsMode::Throughout, hooks)?;
    let counting = BenchConfig {
        ping_count: COUNTING_PINGS,
        ..cfg.clone()
    };
    let mut counts = RunCounts::default();
    for followed in [true, false] {
        agents.reset()?;
        let before = agents.snapshots()?;
        if followed {
            probe.followed(&counting).await?;
        } else {
            probe.untracked(&counting).await?;
        }
        // The last replies' frees are traced just after ping exits.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let after = agents.snapshots()?;
        let mut deltas: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (b, a) in before.iter().zip(&after) {
            for (kind, (n, t)) in program_deltas(&b.programs, &a.programs) {
                let e = deltas.entry(kind).or_default();
                e.0 += n;
                e.1 += t;
            }
        }
        if followed {
            let hits = followed_runs(&after, COUNTING_PINGS);
            // Families without the pod-side tc hooks admit nothing: the pings then cross
            // those programs untracked, and the programs' own run counts say how often.
            let exact = (!hits.is_empty()).then_some(&hits);
            if exact.is_none() {
                eprintln!(
                    "[calibrate] nothing followed with --hooks {hooks} (admission is at tc): runs per RTT from the programs' run counts"
                );
            }
            counts.followed = kind_runs(&deltas, exact, COUNTING_PINGS);
        } else {
            counts.untracked = kind_runs(&deltas, None, COUNTING_PINGS);
        }
    }
    Ok(counts)
}

/// Runs the counting pass and `rounds` rounds on a built lab (with pods), serving nginx in the
/// server pod for ab.
/// Measures `rounds` rounds and documents them with the `earlier` rounds of the same
/// calibration (from earlier calls, e.g. between a demo's repeats), numbered after them.
pub async fn run<A: CalibrationAgents>(
    lab: &Lab,
    cfg: &BenchConfig,
    rounds: u32,
    stats: StatsMode,
    hooks: HookFamilies,
    work_dir: PathBuf,
    earlier: Vec<RoundSample>,
) -> Result<CalibrationDoc, BenchError> {
    let mode = lab.mode();
    let path = lab.pod_path().unwrap_or_else(|| lab.host_path());
    let _nginx = servers::start_nginx(&path.server_netns, &work_dir).map_err(|source| {
        BenchError::Server {
            mode,
            what: "nginx",
            source,
        }
    })?;
    let probe = Probe { lab, cfg };
    eprintln!("[calibrate] counting program runs per RTT (bpf_stats on, not timed)");
    let runs = count_runs::<A>(&probe, cfg, hooks).await?;
    let mut agents: Option<A> = None;
    let first = earlier.iter().map(|s| s.round).max().unwrap_or(0) + 1;
    let last = first + rounds - 1;
    let mut samples = earlier;
    let blocks = ping_blocks::split(cfg.ping_count, PING_BLOCKS);
    for round in first..=last {
        let mut order = Variant::ALL;
        order.rotate_left((round as usize - 1) % Variant::ALL.len());
        // The pings of the three variants in alternating blocks (the order reversed every
        // other block), so a stretch of a slower machine falls on all three.
        let mut followed: [Vec<PingReport>; 3] = Default::default();
        let mut untracked: [Vec<PingReport>; 3] = Default::default();
        for (b, &count) in blocks.iter().enumerate() {
            let block = BenchConfig {
                ping_count: count,
                ..cfg.clone()
            };
            let mut block_order = order;
            if b % 2 == 1 {
                block_order.reverse();
            }
            for variant in block_order {
                set_variant(&mut agents, lab, variant, stats, hooks)?;
                followed[variant as usize].push(probe.followed(&block).await?);
                untracked[variant as usize].push(probe.untracked(&block).await?);
            }
        }
        for variant in order {
            set_variant(&mut agents, lab, variant, stats, hooks)?;
            let p50 = |pings: &[PingReport], what: &str| {
                p50_ns(&PingReport::concatenated(pings), what).map_err(probe.tool_err(what))
            };
            let sample = RoundSample {
                round,
                variant,
                followed_p50_ns: p50(&followed[variant as usize], "followed ping")?,
                untracked_p50_ns: p50(&untracked[variant as usize], "untracked ping")?,
                cpu_ns_per_request: probe.cpu_per_request().await?,
            };
            eprintln!(
                "[calibrate] round {round}/{last} {:<8} followed p50 {:.1} µs, untracked p50 \
                 {:.1} µs{}",
                variant.name(),
                sample.followed_p50_ns / 1e3,
                sample.untracked_p50_ns / 1e3,
                sample
                    .cpu_ns_per_request
                    .map_or(String::new(), |ns| format!(
                        ", {:.1} µs CPU/request",
                        ns / 1e3
                    ))
            );
            samples.push(sample);
        }
    }
    drop(agents);
    Ok(document(lab, cfg, last, stats, runs, samples))
}

/// The ratios against no programs, the ping's against its goal; when the held programs alone
/// are above the goal, says so: no program body can meet it at these hooks.
fn render_ratios(
    ratios: &CalibrationRatios,
    verdict: impl Fn(Interval, f64) -> &'static str,
) -> String {
    let x = |v: Interval| format!("{:.2}x [{:.2}, {:.2}]", v.median, v.lo, v.hi);
    let mut out = format!(
        "  against no programs (each round's variant / off): followed ping p50 held {}, \
             netprof {} (target <= {PING_RATIO_TARGET}x: {})\n",
        x(ratios.held_rtt),
        x(ratios.netprof_rtt),
        verdict(ratios.netprof_rtt, PING_RATIO_TARGET)
    );
    if let (Some(held), Some(netprof)) = (ratios.held_cpu, ratios.netprof_cpu) {
        out += &format!(
            "    CPU per ab request held {}, netprof {}\n",
            x(held),
            x(netprof)
        );
    }
    if ratios.held_rtt.lo > PING_RATIO_TARGET {
        out += &format!(
            "    the programs held at their hooks (each returns at once) are above \
                 {PING_RATIO_TARGET}x by themselves: the hooks' dispatch costs more than the \
                 target allows, before any program body\n"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(round: u32, variant: Variant, followed: f64, untracked: f64) -> RoundSample {
        RoundSample {
            round,
            variant,
            followed_p50_ns: followed,
            untracked_p50_ns: untracked,
            cpu_ns_per_request: None,
        }
    }

    #[test]
    fn pairs_are_taken_within_rounds() {
        let samples = vec![
            s(1, Variant::Off, 30_000.0, 20_000.0),
            s(1, Variant::Paused, 31_000.0, 20_500.0),
            s(1, Variant::Netprof, 34_000.0, 21_000.0),
            // Round 2 drifted up by 5 µs: the pairs do not see it.
            s(2, Variant::Paused, 36_200.0, 25_400.0),
            s(2, Variant::Netprof, 39_000.0, 26_000.0),
            s(2, Variant::Off, 35_000.0, 25_000.0),
        ];
        let f = |s: &RoundSample| Some(s.followed_p50_ns);
        assert_eq!(
            paired(&samples, Variant::Off, Variant::Paused, f),
            [1000.0, 1200.0]
        );
        assert_eq!(
            paired(&samples, Variant::Paused, Variant::Netprof, f),
            [3000.0, 2800.0]
        );
        assert_eq!(
            interval_of(&[1000.0, 1200.0]),
            Interval::point(1100.0),
            "under three rounds: the median alone"
        );
    }

    #[test]
    fn ratios_are_taken_within_rounds_and_a_floor_above_the_goal_is_named() {
        // The machine drifts by 10 µs over four rounds; held programs add a quarter, netprof
        // half of each round's own p50.
        let samples: Vec<RoundSample> = (1..=4)
            .flat_map(|round| {
                let off = 30_000.0 + 2_500.0 * f64::from(round);
                [
                    s(round, Variant::Off, off, 20_000.0),
                    s(round, Variant::Paused, off * 1.25, 20_000.0),
                    s(round, Variant::Netprof, off * 1.5, 20_000.0),
                ]
            })
            .collect();
        let f = |s: &RoundSample| Some(s.followed_p50_ns);
        let of = |v| interval_of(&per_round(&samples, Variant::Off, v, f, ratio));
        let (held, netprof) = (of(Variant::Paused), of(Variant::Netprof));
        assert!((held.median - 1.25).abs() < 1e-9 && (held.hi - held.lo).abs() < 1e-9);
        assert!((netprof.median - 1.5).abs() < 1e-9);
        let verdict = |v: Interval, target: f64| {
            if v.lo > target {
                "missed"
            } else {
                "not missed"
            }
        };
        let ratios = |held| CalibrationRatios {
            held_rtt: held,
            netprof_rtt: netprof,
            held_cpu: None,
            netprof_cpu: None,
        };
        let text = render_ratios(&ratios(held), verdict);
        assert!(
            text.contains("held 1.25x [1.25, 1.25], netprof 1.50x"),
            "{text}"
        );
        assert!(text.contains("target <= 1.15x: missed"), "{text}");
        assert!(text.contains("above 1.15x by themselves"), "{text}");
        // Held programs within the goal: the cost is the bodies', nothing more is said.
        let cheap_hold = interval_of(&[1.05, 1.1, 1.08]);
        assert!(!render_ratios(&ratios(cheap_hold), verdict).contains("by themselves"));
        // A round without `off` (or with a zero) pairs nothing.
        let lone = [
            s(9, Variant::Paused, 1.0, 1.0),
            s(10, Variant::Off, 0.0, 0.0),
            s(10, Variant::Paused, 5.0, 5.0),
        ];
        assert!(per_round(&lone, Variant::Off, Variant::Paused, f, ratio).is_empty());
    }

    #[test]
    fn dispatch_is_shared_per_run_and_bodies_by_run_time() {
        // 40 netfilter runs of 100 ns (bpf_stats) and 10 tc runs of 200 ns per RTT: bodies
        // weigh 4000 : 2000. A measured body of 3000 ns gives netfilter 3000 x 100/6000 = 50 ns
        // per run and tc 100 ns; a dispatch of 1000 ns over 50 runs is 20 ns per run.
        let runs = BTreeMap::from([
            (
                "netfilter".to_owned(),
                KindRuns {
                    runs_per_rtt: 40.0,
                    stats_ns_per_run: 100.0,
                },
            ),
            (
                "tc-ingress".to_owned(),
                KindRuns {
                    runs_per_rtt: 10.0,
                    stats_ns_per_run: 200.0,
                },
            ),
        ]);
        let costs = per_kind(Interval::point(1000.0), Interval::point(3000.0), &runs);
        assert_eq!(costs["netfilter"].0, Interval::point(20.0));
        assert_eq!(costs["netfilter"].1, Interval::point(70.0));
        assert_eq!(costs["tc-ingress"].1, Interval::point(120.0));
        // Summed back over the runs: the measured 4000 ns.
        let total = 40.0 * costs["netfilter"].1.median + 10.0 * costs["tc-ingress"].1.median;
        assert_eq!(total, 4000.0);
        // A shift below zero (noise) is no cost, not a negative one.
        let costs = per_kind(Interval::point(-500.0), Interval::point(-10.0), &runs);
        assert_eq!(costs["netfilter"].1, Interval::point(0.0));
    }

    #[test]
    fn program_deltas_are_per_kind_and_per_program_id() {
        let p = |name: &str, id, n, t| ProgramStats {
            name: name.into(),
            id,
            run_count: n,
            run_time_ns: t,
            ns_per_run: 0.0,
        };
        let before = [p("cp_tc_ingress", 7, 100, 5000), p("nf_p1", 9, 10, 900)];
        let after = [
            p("cp_tc_ingress", 7, 150, 7000),
            p("cp_tc_upl_in", 8, 20, 3000),
            p("nf_p1", 9, 30, 2900),
            p("cp_tc_admit", 11, 99, 9999),
        ];
        let d = program_deltas(&before, &after);
        assert_eq!(d["tc-ingress"], (70, 5000));
        assert_eq!(d["netfilter"], (20, 2000));
        assert_eq!(d.len(), 2, "admission is not a checkpoint kind: {d:?}");
        let runs = kind_runs(&d, None, 10);
        assert_eq!(runs["tc-ingress"].runs_per_rtt, 7.0);
        assert!((runs["tc-ingress"].stats_ns_per_run - 5000.0 / 70.0).abs() < 1e-9);
    }
}
