//! One check on the lab: build its labs, profile what the prediction needs, then measure the
//! interleaved rounds with no agent attached.

use std::net::SocketAddrV4;
use std::path::PathBuf;

use super::checks::{CheckKind, LabPlan, Side};
use super::switch;
use super::{CheckRun, ProfiledRun, Round, Sample, ValidatePlan};
use crate::bench::profile::{self, Profiler};
use crate::bench::{cpu_time, servers, tools, BenchConfig, BenchError, Progress};
use crate::lab::{self, Lab, LabNames, LabSpec};
use crate::rundir::{NetPath, RunDir, Tool};

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

/// Ping, then ab straight to the nginx pod with the machine's CPU time per request.
async fn sample(cfg: &BenchConfig, lab: &Lab, label: &str) -> Result<Sample, BenchError> {
    let mode = lab.mode();
    let endpoints = lab.pod_path().expect("validation labs have pods");
    let tool_err = |step: &'static str| {
        let step = format!("{label}: {step}");
        move |source| BenchError::Tool { mode, step, source }
    };
    let ping = tools::ping(&endpoints.client_netns, endpoints.server_ip, cfg)
        .await
        .map_err(tool_err("ping"))?;
    let cpu = cpu_time::CpuMeter::start();
    let target = SocketAddrV4::new(endpoints.server_ip, 80);
    let ab = tools::ab(&endpoints.http_client_netns, target, cfg)
        .await
        .map_err(tool_err("ab"))?;
    let ab_cpu_ns_per_request = cpu.per_request(ab.complete_requests);
    Ok(Sample {
        ping,
        ab,
        ab_cpu_ns_per_request,
    })
}

fn summary(s: &Sample) -> String {
    format!(
        "p50 {}, {:.0} req/s{}",
        s.ping.stats.map_or("no reply".to_owned(), |st| format!(
            "{:.1} µs",
            st.p50_ms * 1e3
        )),
        s.ab.requests_per_second,
        s.ab_cpu_ns_per_request.map_or(String::new(), |ns| format!(
            ", {:.1} µs CPU per request",
            ns / 1e3
        ))
    )
}

/// One state with the agents attached, for the prediction; reports under
/// `validate/<check>-<side>/`.
async fn profiled(
    ctx: &Context<'_>,
    lab: &Lab,
    check: CheckKind,
    side: Side,
) -> Result<ProfiledRun, BenchError> {
    let mode = lab.mode();
    let profile_err = |source| BenchError::Profile { mode, source };
    let dir = RunDir::validate_run_relative(&format!("{}-{}", check.name(), side.name()));
    let profiler =
        Profiler::start(lab, &RunDir::new(ctx.out.resolve(&dir))).map_err(profile_err)?;
    let endpoints = lab.pod_path().expect("validation labs have pods");
    let label = format!("validate {check} {} profiled", side.name());
    let tool_err = |step: &'static str| {
        let step = format!("{label}: {step}");
        move |source| BenchError::Tool { mode, step, source }
    };
    let flows = profile::path_flows(&endpoints, Tool::Ping).map_err(profile_err)?;
    profiler
        .before_step(&flows, Tool::Ping)
        .map_err(profile_err)?;
    let ping = tools::ping(&endpoints.client_netns, endpoints.server_ip, ctx.cfg)
        .await
        .map_err(tool_err("ping"))?;
    let mut profiles = profiler
        .after_step(NetPath::Pod, Tool::Ping)
        .map_err(profile_err)?;
    let target = SocketAddrV4::new(endpoints.server_ip, 80);
    let flows =
        profile::http_flows(lab, &endpoints.http_client_netns, target).map_err(profile_err)?;
    profiler
        .before_step(&flows, Tool::Ab)
        .map_err(profile_err)?;
    let cpu = cpu_time::CpuMeter::start();
    let ab = tools::ab(&endpoints.http_client_netns, target, ctx.cfg)
        .await
        .map_err(tool_err("ab"))?;
    let ab_cpu_ns_per_request = cpu.per_request(ab.complete_requests);
    profiles.extend(
        profiler
            .after_step(NetPath::Pod, Tool::Ab)
            .map_err(profile_err)?,
    );
    drop(profiler);
    Ok(ProfiledRun {
        side,
        mode,
        dir: dir.display().to_string(),
        sample: Sample {
            ping,
            ab,
            ab_cpu_ns_per_request,
        },
        profiles,
    })
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
    let mut sides = vec![Side::A];
    if check.profiles_b() {
        sides.push(Side::B);
    }
    let mut runs = Vec::new();
    for side in sides {
        let t = progress.step(&format!("{what}: {} profiled", side.name()));
        set_state(check, &a.lab, side)?;
        let run = profiled(ctx, lab_of(side), check, side).await?;
        progress.done(t, &summary(&run.sample));
        runs.push(run);
    }
    let mut rounds = Vec::new();
    for round in 0..ctx.plan.rounds {
        let order = Side::order(round);
        let mut got: Vec<(Side, Sample)> = Vec::new();
        for side in order {
            let label = format!("{what} round {} {}", round + 1, side.name());
            let t = progress.step(&label);
            set_state(check, &a.lab, side)?;
            let s = sample(ctx.cfg, lab_of(side), &label).await?;
            progress.done(t, &summary(&s));
            got.push((side, s));
        }
        let take = |want: Side| {
            got.iter()
                .find(|(side, _)| *side == want)
                .map(|(_, s)| s.clone())
                .expect("both sides measured")
        };
        rounds.push(Round {
            round,
            order,
            a: take(Side::A),
            b: take(Side::B),
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
