//! One check on the lab: build its labs, profile what the prediction needs, then measure the
//! interleaved rounds with no agent attached.

use std::net::SocketAddrV4;
use std::path::PathBuf;

use super::checks::{CheckKind, LabPlan, Side};
use super::switch;
use super::{CheckRun, ProfiledRun, Round, Sample, ValidatePlan, PING_BLOCKS};
use crate::bench::ping_blocks;
use crate::bench::profile::{self, Profiler};
use crate::bench::result::{AbAgentsOff, AbRun, AgentsOffPings};
use crate::bench::tools::ToolError;
use crate::bench::{servers, tools, BenchConfig, BenchError, Progress};
use crate::lab::{self, Lab, LabNames, LabSpec};
use crate::parse::{ab::AbReport, ping::PingReport};
use crate::rundir::{NetPath, ProfileFile, RunDir, Tool};

/// What every step of a check needs.
pub struct Context<'a> {
    pub cfg: &'a BenchConfig,
    pub out: &'a RunDir,
    pub plan: &'a ValidatePlan,
    /// The first and the second lab's names.
    pub labs: [&'a LabNames; 2],
    pub index: usize,
    pub total: usize,
}

/// A lab that is up, with nginx serving on its pod path.
struct Running {
    lab: Lab,
    _nginx: servers::RunningServer,
}

fn bring_up(
    names: &LabNames,
    plan: LabPlan,
    progress: &Progress,
    what: &str,
) -> Result<Running, BenchError> {
    let t = progress.step(&format!("{what}: lab {} ({})", names.lab(), plan.mode));
    let lab = lab::up_with(
        names,
        LabSpec {
            mode: plan.mode,
            services: 0,
        },
        plan.ablation,
    )
    .map_err(|e| progress.failed(e))?;
    progress.done(t, "up");
    let endpoints = lab.pod_path().expect("validation labs have pods");
    let work_dir = PathBuf::from(lab::STATE_DIR)
        .join(lab.names.lab())
        .join(format!("nginx-{}", endpoints.server_netns));
    let nginx = servers::start_nginx(&endpoints.server_netns, &work_dir).map_err(|source| {
        BenchError::Server {
            mode: plan.mode,
            what: "nginx",
            source,
        }
    })?;
    Ok(Running { lab, _nginx: nginx })
}

fn tool_error(lab: &Lab, label: &str, step: &'static str) -> impl FnOnce(ToolError) -> BenchError {
    let (mode, step) = (lab.mode(), format!("{label}: {step}"));
    move |source| BenchError::Tool { mode, step, source }
}

/// One state's ping: `count` echo requests in one run.
async fn ping(
    cfg: &BenchConfig,
    lab: &Lab,
    count: u32,
    label: &str,
) -> Result<PingReport, BenchError> {
    let endpoints = lab.pod_path().expect("validation labs have pods");
    let cfg = BenchConfig {
        ping_count: count,
        ..cfg.clone()
    };
    tools::ping(&endpoints.client_netns, endpoints.server_ip, &cfg)
        .await
        .map_err(tool_error(lab, label, "ping"))
}

/// ab straight to the nginx pod, with the machine's CPU time per request.
async fn ab(
    cfg: &BenchConfig,
    lab: &Lab,
    label: &str,
) -> Result<(AbReport, Option<f64>), BenchError> {
    let endpoints = lab.pod_path().expect("validation labs have pods");
    let target = SocketAddrV4::new(endpoints.server_ip, 80);
    tools::ab_with_cpu(&endpoints.http_client_netns, target, cfg)
        .await
        .map_err(tool_error(lab, label, "ab"))
}

/// [`ab`] as one run of a step.
async fn ab_run(cfg: &BenchConfig, lab: &Lab, label: &str) -> Result<AbRun, BenchError> {
    let (ab, cpu_ns_per_request) = ab(cfg, lab, label).await?;
    Ok(AbRun {
        ab,
        cpu_ns_per_request,
    })
}

/// A round's pings: both states, block by block, the order alternating per block.
async fn pings(
    ctx: &Context<'_>,
    check: CheckKind,
    labs: (&Lab, &Lab),
    round: u32,
    what: &str,
) -> Result<[PingReport; 2], BenchError> {
    let blocks = ping_blocks::split(ctx.cfg.ping_count, PING_BLOCKS);
    let mut runs: [Vec<PingReport>; 2] = Default::default();
    for (b, &count) in blocks.iter().enumerate() {
        for side in Side::order(round * blocks.len() as u32 + b as u32) {
            set_state(check, labs.0, side)?;
            let lab = if side == Side::A { labs.0 } else { labs.1 };
            let label = format!("{what} round {} {} ping", round + 1, side.name());
            runs[side as usize].push(ping(ctx.cfg, lab, count, &label).await?);
        }
    }
    Ok(runs.map(|r| PingReport::concatenated(&r)))
}

fn p50(ping: &PingReport) -> String {
    ping.stats.map_or("no reply".to_owned(), |st| {
        format!("{:.1} µs", st.p50_ms * 1e3)
    })
}

fn summary(s: &Sample) -> String {
    format!(
        "p50 {}, {:.0} req/s{}",
        p50(&s.ping),
        s.ab.requests_per_second,
        s.ab_cpu_ns_per_request.map_or(String::new(), |ns| format!(
            ", {:.1} µs CPU per request",
            ns / 1e3
        ))
    )
}

/// The state(s) a prediction needs (`a`, or `a` and `b`, `labs` in that order; `b` may be
/// `a`'s lab switched in place) with the agents attached: the pings in alternating blocks,
/// each block's reports written apart (agents on both labs, or on the one lab whose state
/// switches between blocks), so the states' profiles see the same stretches of the machine's
/// speed; then ab on each state. Profiled one after the other, the two states' segments
/// differed by the machine's seconds-long slow stretches (a round's predicted `a - b` swung
/// between -7 and +29 µs where the measured one was +5).
///
/// Each state is also pinged with every agent detached, in the same turns (`ping_agents_off`):
/// its profiled p50 less that one is what netprof cost that state's pings in this round, which
/// the prediction takes out of the stages (`report::in_pass_cost`). Likewise its ab runs once
/// with every agent detached just before the profiled ab and once just after
/// (`ab_agents_off`). Only the agents of the lab a block or an ab run measures are attached:
/// another lab's agents would run their kernel-wide tracers on its packets too. Reports under
/// `validate/<check>-<side>-r<round>/`.
async fn profiled_states(
    ctx: &Context<'_>,
    check: CheckKind,
    labs: &[&Lab],
    round: u32,
) -> Result<Vec<ProfiledRun>, BenchError> {
    let sides = &[Side::A, Side::B][..labs.len()];
    let profile_err = |lab: &Lab| {
        let mode = lab.mode();
        move |source| BenchError::Profile { mode, source }
    };
    let dirs: Vec<PathBuf> = sides
        .iter()
        .map(|side| {
            RunDir::validate_run_relative(&format!(
                "{}-{}-r{}",
                check.name(),
                side.name(),
                round + 1
            ))
        })
        .collect();
    let outs: Vec<RunDir> = dirs
        .iter()
        .map(|d| RunDir::new(ctx.out.resolve(d)))
        .collect();
    // One profiler per distinct lab: `b` switched in place shares `a`'s.
    let mut profilers: Vec<Profiler> = Vec::new();
    let mut profiler_of = Vec::new();
    for (i, lab) in labs.iter().enumerate() {
        match labs[..i].iter().position(|l| std::ptr::eq(*l, *lab)) {
            Some(j) => profiler_of.push(profiler_of[j]),
            None => {
                let tuning = profile::AgentTuning {
                    hooks: ctx.plan.hooks,
                    ..Default::default()
                };
                profilers
                    .push(Profiler::start_with(lab, &outs[i], &tuning).map_err(profile_err(lab))?);
                profiler_of.push(profilers.len() - 1);
            }
        }
    }
    let agents: Vec<&Profiler> = profilers.iter().collect();
    let attach_only = |only: Option<usize>| profile::attach_only(&agents, only);
    let endpoints: Vec<_> = labs
        .iter()
        .map(|lab| lab.pod_path().expect("validation labs have pods"))
        .collect();
    let label = |side: Side| format!("validate {check} {} profiled", side.name());
    let n = sides.len();
    let mut on: Vec<Vec<PingReport>> = vec![Vec::new(); n];
    let mut off: Vec<Vec<PingReport>> = vec![Vec::new(); n];
    let mut profiles: Vec<Vec<ProfileFile>> = vec![Vec::new(); n];
    let blocks = ping_blocks::split(ctx.cfg.ping_count, PING_BLOCKS);
    for (block, &count) in blocks.iter().enumerate() {
        // Targets `0..n` attached, `n..2n` the same states detached.
        for t in ping_blocks::order(2 * n, round as usize * blocks.len() + block) {
            let (i, attached) = (t % n, t < n);
            let (side, lab) = (sides[i], labs[i]);
            set_state(check, labs[0], side)?;
            attach_only(attached.then_some(profiler_of[i]))?;
            if !attached {
                off[i].push(ping(ctx.cfg, lab, count, &label(side)).await?);
                continue;
            }
            let flows = profile::path_flows(&endpoints[i], Tool::Ping).map_err(profile_err(lab))?;
            let profiler = &profilers[profiler_of[i]];
            profiler.before_step(&flows).map_err(profile_err(lab))?;
            on[i].push(ping(ctx.cfg, lab, count, &label(side)).await?);
            profiles[i].extend(
                profiler
                    .after_step_into(&outs[i], NetPath::Pod, Tool::Ping, Some(block))
                    .map_err(profile_err(lab))?,
            );
        }
    }
    let mut abs: Vec<Option<(AbReport, Option<f64>)>> = vec![None; n];
    let mut abs_off: Vec<Vec<AbRun>> = vec![Vec::new(); n];
    let detached = |side: Side| format!("validate {check} {} detached", side.name());
    for side in Side::order(round).into_iter().filter(|s| sides.contains(s)) {
        let (i, lab) = (side as usize, labs[side as usize]);
        set_state(check, labs[0], side)?;
        attach_only(None)?;
        abs_off[i].push(ab_run(ctx.cfg, lab, &detached(side)).await?);
        attach_only(Some(profiler_of[i]))?;
        let target = SocketAddrV4::new(endpoints[i].server_ip, 80);
        let flows = profile::http_flows(lab, &endpoints[i].http_client_netns, target)
            .map_err(profile_err(lab))?;
        let profiler = &profilers[profiler_of[i]];
        profiler.before_step(&flows).map_err(profile_err(lab))?;
        abs[i] = Some(ab(ctx.cfg, lab, &label(side)).await?);
        profiles[i].extend(
            profiler
                .after_step_into(&outs[i], NetPath::Pod, Tool::Ab, None)
                .map_err(profile_err(lab))?,
        );
        attach_only(None)?;
        abs_off[i].push(ab_run(ctx.cfg, lab, &detached(side)).await?);
    }
    drop(profilers);
    Ok((0..n)
        .map(|i| {
            let (ab, ab_cpu_ns_per_request) = abs[i].take().expect("each side's ab ran");
            ProfiledRun {
                side: sides[i],
                mode: labs[i].mode(),
                dir: dirs[i].display().to_string(),
                sample: Sample {
                    ping: PingReport::concatenated(&on[i]),
                    ab,
                    ab_cpu_ns_per_request,
                },
                ping_agents_off: Some(AgentsOffPings::from_blocks(&on[i], &off[i])),
                ab_agents_off: Some(AbAgentsOff {
                    runs: std::mem::take(&mut abs_off[i]),
                }),
                profiles: std::mem::take(&mut profiles[i]),
            }
        })
        .collect())
}

/// Puts the lab(s) in `side`'s state.
fn set_state(check: CheckKind, lab_a: &Lab, side: Side) -> Result<(), BenchError> {
    match check {
        CheckKind::Notrack => switch::set_notrack(lab_a, side == Side::B)?,
        CheckKind::OneNodeRules => switch::set_one_node_rules(lab_a, side == Side::A)?,
        CheckKind::NoKubeProxy | CheckKind::Encapsulation => {}
    }
    Ok(())
}

/// Runs one check: its labs up, the profiled state(s), then the rounds.
pub async fn check(ctx: &Context<'_>, check: CheckKind) -> Result<CheckRun, BenchError> {
    let (plan_a, plan_b) = check.labs(ctx.plan.mode);
    let progress = Progress {
        index: ctx.index,
        total: ctx.total,
        mode: plan_a.mode,
        twin: false,
    };
    let what = format!("validate {check}");
    let a = bring_up(ctx.labs[0], plan_a, &progress, &what)?;
    let b = match plan_b {
        Some(plan) => Some(bring_up(ctx.labs[1], plan, &progress, &what)?),
        None => None,
    };
    let rules = if check == CheckKind::OneNodeRules {
        switch::install_one_node_rules(&a.lab, ctx.plan.one_node_rules)?;
        Some(switch::one_node_rule_count(&a.lab)?)
    } else {
        None
    };
    let lab_of = |side: Side| match (&b, side) {
        (Some(b), Side::B) => &b.lab,
        _ => &a.lab,
    };
    let mut runs = Vec::new();
    let mut rounds = Vec::new();
    for round in 0..ctx.plan.rounds {
        // The prediction's profiles are taken in every round too, so they see the same
        // stretches of the machine's speed as the measured pings (agents detached after).
        let t = progress.step(&format!("{what} round {} profiled", round + 1));
        let labs: &[&Lab] = if check.profiles_b() {
            &[&a.lab, lab_of(Side::B)]
        } else {
            &[&a.lab]
        };
        let profiled_now = profiled_states(ctx, check, labs, round).await?;
        let said: Vec<String> = profiled_now
            .iter()
            .map(|r| format!("{}: {}", r.side.name(), summary(&r.sample)))
            .collect();
        progress.done(t, &said.join("; "));
        runs.extend(profiled_now);
        let t = progress.step(&format!(
            "{what} round {}: pings a/b in {} alternating blocks",
            round + 1,
            ping_blocks::split(ctx.cfg.ping_count, PING_BLOCKS).len()
        ));
        let [ping_a, ping_b] = pings(ctx, check, (&a.lab, lab_of(Side::B)), round, &what).await?;
        progress.done(t, &format!("p50 a {}, b {}", p50(&ping_a), p50(&ping_b)));
        let order = Side::order(round);
        let mut pings = [Some(ping_a), Some(ping_b)];
        let mut got: [Option<Sample>; 2] = [None, None];
        for side in order {
            let label = format!("{what} round {} {}", round + 1, side.name());
            let t = progress.step(&format!("{label} ab"));
            set_state(check, &a.lab, side)?;
            let (ab, ab_cpu_ns_per_request) = ab(ctx.cfg, lab_of(side), &label).await?;
            let s = Sample {
                ping: pings[side as usize].take().expect("each side once"),
                ab,
                ab_cpu_ns_per_request,
            };
            progress.done(t, &summary(&s));
            got[side as usize] = Some(s);
        }
        let [Some(a_sample), Some(b_sample)] = got else {
            unreachable!("both sides measured")
        };
        rounds.push(Round {
            round,
            order,
            a: a_sample,
            b: b_sample,
        });
    }
    Ok(CheckRun {
        check,
        mode_a: plan_a.mode,
        mode_b: plan_b.map_or(plan_a.mode, |p| p.mode),
        rules,
        profiled: runs,
        rounds,
    })
}
