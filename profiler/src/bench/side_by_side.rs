//! Several modes side by side: every mode's lab up at once, every path of every mode pinged
//! in blocks that take turns, then each mode's iperf3 and ab on its own lab, one mode at a
//! time, each lab removed after its mode.
//!
//! The study's table and the report's clean delta compare a mode's pod path with host mode's
//! host path, which lives in another lab. Measured one mode after the other, minutes apart,
//! the two p50s took different stretches of the machine's speed: host mode's p50 without
//! agents was 6 µs in one repeat of a demo and 34-39 µs in the other two. Pinged in turns,
//! every path sees the same stretches.
//!
//! Profiled, the same holds for the stage split, which sets a mode's pod-path segments against
//! host mode's host-path segments: every lab has its agents, but only the agents of the lab
//! being pinged are attached (the others' links are closed), since agents on every lab at once
//! would each run their kernel-wide tracers on every lab's packets. Every path is also pinged
//! with no agent attached at all, in the same turns (netprof's cost in the pass, as
//! `ping_step` does for one lab).
//!
//! And it holds between the split and the clean delta it is judged on: a clean pass run as
//! another process, minutes before or after, saw the machine 20 µs faster or slower than the
//! profile did. So a profiled run also brings up a clean twin of every lab, which no agent
//! ever attaches to: its paths take their turns in the same ping step (with every agent
//! detached), its iperf3 and ab run right beside its profiled lab's (also with every agent
//! detached), and its results go to `DIR/clean/`.

use std::io::Write as _;
use std::time::Instant;

use super::ping_step::{self, Around, PathPings, Target};
use super::profile::{self, AgentTuning, Profiler};
use super::result::{AgentsOffPings, ModeResult};
use super::{
    bring_up, measure_mode, paths_of, start_profiler, write_result, BenchConfig, BenchError,
    Progress, Started, TakenPings,
};
use crate::lab::{self, Lab, LabError, LabLock, LabNames, Mode, PathEndpoints};
use crate::parse::ping::PingReport;
use crate::rundir::{NetPath, ProfileFile, RunDir, Tool};

/// Whether `modes` are measured side by side: several modes, pings in blocks, and agents (if
/// any) that can be detached on demand (a duty cycle's thread owns its agents' links).
pub fn applies(modes: &[Mode], cfg: &BenchConfig, profile: Option<&AgentTuning>) -> bool {
    modes.len() > 1 && cfg.ping_blocks > 1 && profile.is_none_or(|t| t.duty.is_none())
}

/// Whether a side-by-side run also measures every mode on a clean twin: profiled runs that ask.
pub fn with_twins(profile: Option<&AgentTuning>) -> bool {
    profile.is_some_and(|t| t.clean_twins)
}

/// The labs of `count` modes side by side (twice as many with twins): `names` itself, then
/// `<lab>-2`, `<lab>-3`, ...; the twins are the second half.
pub fn lab_names(names: &LabNames, count: usize, twins: bool) -> Result<Vec<LabNames>, LabError> {
    let count = if twins { 2 * count } else { count };
    let mut all = vec![names.clone()];
    for k in 2..=count {
        all.push(LabNames::new(&format!("{}-{k}", names.lab()))?);
    }
    Ok(all)
}

/// Runs `modes` side by side, profiled with `profile`'s agents when given; every lab is
/// removed, also when a step fails. The caller holds the first lab's lock and, on Ctrl-C,
/// removes every lab of [`lab_names`].
pub async fn run(
    modes: &[Mode],
    cfg: &BenchConfig,
    names: &LabNames,
    out: &RunDir,
    profile: Option<&AgentTuning>,
) -> Result<Vec<ModeResult>, BenchError> {
    let all = lab_names(names, modes.len(), with_twins(profile))?;
    let mut locks = Vec::new();
    for extra in &all[1..] {
        locks.push(LabLock::acquire(extra.lab()).map_err(LabError::from)?);
    }
    // The agents are dropped (every link closed) inside `measure`, before the labs go.
    let outcome = measure(modes, cfg, &all, out, profile).await;
    let teardown = lab::down_all(&all);
    let results = outcome?;
    teardown?;
    Ok(results)
}

/// A lab of the run, up, with its agents when it is a profiled one.
struct RunLab {
    started: Started,
    lab: Lab,
    profiler: Option<Profiler>,
    /// A clean twin: no agent, ever.
    twin: bool,
}

async fn measure(
    modes: &[Mode],
    cfg: &BenchConfig,
    all: &[LabNames],
    out: &RunDir,
    profile: Option<&AgentTuning>,
) -> Result<Vec<ModeResult>, BenchError> {
    let twins = with_twins(profile);
    let clean = out.clean();
    if twins {
        clean.prepare().map_err(|source| BenchError::Output {
            path: clean.root().to_path_buf(),
            source,
        })?;
    }
    // The profiled (or plain) labs first, then their twins in the same order.
    let progress: Vec<Progress> = (0..all.len())
        .map(|j| Progress {
            index: j % modes.len() + 1,
            total: modes.len(),
            mode: modes[j % modes.len()],
            twin: j >= modes.len(),
        })
        .collect();
    let mut labs = Vec::new();
    for (p, names) in progress.iter().zip(all) {
        let started = Started::now();
        let lab = bring_up(p, cfg, names)?;
        let profiler = match profile.filter(|_| !p.twin) {
            Some(tuning) => {
                let profiler = start_profiler(p, &lab, out, tuning)?;
                // Until its lab's turn, nothing of it is in any path.
                set_attached(&profiler, lab.mode(), false)?;
                Some(profiler)
            }
            None => None,
        };
        labs.push(Some(RunLab {
            started,
            lab,
            profiler,
            twin: p.twin,
        }));
    }
    let up: Vec<&RunLab> = labs.iter().flatten().collect();
    let mut pings: Vec<Option<TakenPings>> =
        ping_all(cfg, &up).await?.into_iter().map(Some).collect();
    let mut results = Vec::new();
    let mut twin_results = Vec::new();
    for (i, &mode) in modes.iter().enumerate() {
        // The profiled lab and its twin (if any), the twin first in every other mode so that
        // neither side always runs right after the previous mode.
        let mut turn = vec![i];
        if twins {
            let twin = i + modes.len();
            turn = if i % 2 == 0 {
                vec![i, twin]
            } else {
                vec![twin, i]
            };
        }
        for j in turn {
            let run = labs[j].take().expect("each lab measured once");
            let taken = TakenPings {
                with: modes.iter().copied().filter(|&m| m != mode).collect(),
                ..pings[j].take().expect("pings for every lab")
            };
            if let Some(profiler) = &run.profiler {
                set_attached(profiler, mode, true)?;
            }
            let outcome = measure_mode(
                &progress[j],
                cfg,
                &run.lab,
                run.profiler,
                Some(taken),
                run.started,
            )
            .await;
            // Done with this lab: it goes now (its agents went with `measure_mode`), the
            // others stay for their turn.
            let teardown = lab::down(&all[j]);
            let result = outcome?;
            teardown?;
            if run.twin {
                write_result(&clean, &result)?;
                twin_results.push(result);
            } else {
                write_result(out, &result)?;
                results.push(result);
            }
        }
    }
    if twins {
        let path = clean.table_file();
        std::fs::write(&path, super::table::render(&twin_results))
            .map_err(|source| BenchError::Output { path, source })?;
    }
    Ok(results)
}

fn set_attached(profiler: &Profiler, mode: Mode, attached: bool) -> Result<(), BenchError> {
    profiler
        .set_attached(attached)
        .map_err(|source| BenchError::Profile { mode, source })
}

/// One target of the ping step: path `path` of lab `lab`, with that lab's agents attached in
/// its blocks or with no agent attached anywhere.
#[derive(Clone, Copy)]
struct Turn {
    lab: usize,
    path: usize,
    attached: bool,
}

/// Every path of every lab pinged in turns (and, with agents, each profiled path once more
/// with none attached); each lab's pings in its paths' order, with its agents' reports of the
/// profiled blocks.
async fn ping_all(cfg: &BenchConfig, labs: &[&RunLab]) -> Result<Vec<TakenPings>, BenchError> {
    let paths: Vec<Vec<(NetPath, PathEndpoints)>> =
        labs.iter().map(|run| paths_of(&run.lab)).collect();
    // Each path of each lab as its lab pings it (attached where it has agents), then the
    // profiled paths again with no agent attached.
    let mut turns: Vec<Turn> = Vec::new();
    for (l, run) in labs.iter().enumerate() {
        for k in 0..paths[l].len() {
            let attached = run.profiler.is_some();
            turns.push(Turn {
                lab: l,
                path: k,
                attached,
            });
        }
    }
    let own = turns.len();
    let detached: Vec<Turn> = turns
        .iter()
        .filter(|t| t.attached)
        .map(|&t| Turn {
            attached: false,
            ..t
        })
        .collect();
    turns.extend(detached);
    let targets: Vec<Target> = turns
        .iter()
        .map(|t| Target {
            mode: labs[t.lab].lab.mode(),
            path: paths[t.lab][t.path].0,
            endpoints: &paths[t.lab][t.path].1,
        })
        .collect();
    let mut flows = Vec::new();
    for t in &turns {
        // Only an attached turn has agents to point at its flows.
        flows.push(if t.attached {
            let lab = &labs[t.lab].lab;
            profile::step_flows(lab, &paths[t.lab][t.path].1, Tool::Ping).map_err(|source| {
                BenchError::Profile {
                    mode: lab.mode(),
                    source,
                }
            })?
        } else {
            Vec::new()
        });
    }
    let profiled = turns.len() > own;
    let twins = labs.iter().filter(|run| run.twin).count();
    let twin_paths = turns[..own].iter().filter(|t| labs[t.lab].twin).count();
    let mut note = String::new();
    if profiled {
        note += ", each lab's agents attached in its turns, and with none attached in turns too";
    }
    if twins > 0 {
        note += &format!("; beside them {twin_paths} paths of {twins} clean twin labs");
    }
    eprint!(
        "[pings] {} paths of {} modes side by side{note}, {} ... ",
        own - twin_paths,
        labs.len() - twins,
        ping_step::describe(cfg, targets.len())
    );
    let _ = std::io::stderr().flush();
    let t = Instant::now();
    let mut files: Vec<Vec<ProfileFile>> = vec![Vec::new(); labs.len()];
    // Lab `l`'s agents are `agents[agent_of[l]]`.
    let agents: Vec<&Profiler> = labs
        .iter()
        .filter_map(|run| run.profiler.as_ref())
        .collect();
    let agent_of: Vec<Option<usize>> = labs
        .iter()
        .scan(0, |next, run| {
            Some(run.profiler.as_ref().map(|_| {
                *next += 1;
                *next - 1
            }))
        })
        .collect();
    let blocks = ping_step::ping_in_blocks(cfg, &targets, |at| {
        let i = match at {
            Around::Before(i) | Around::After(i, _) => i,
        };
        let turn = turns[i];
        let run = labs[turn.lab];
        let err = |source| BenchError::Profile {
            mode: run.lab.mode(),
            source,
        };
        let profiler = run.profiler.as_ref().filter(|_| turn.attached);
        match at {
            // A lab's profiled block: its agents alone attached. Any other block: none.
            Around::Before(_) => {
                let only = agent_of[turn.lab].filter(|_| turn.attached);
                profile::attach_only(&agents, only)?;
                match profiler {
                    Some(p) => p.before_step(&flows[i]).map_err(err),
                    None => Ok(()),
                }
            }
            Around::After(_, block) => {
                if let Some(p) = profiler {
                    let path = paths[turn.lab][turn.path].0;
                    files[turn.lab]
                        .extend(p.after_step_part(path, Tool::Ping, block).map_err(err)?);
                }
                Ok(())
            }
        }
    })
    .await
    .inspect_err(|_| eprintln!("failed"))?;
    profile::attach_only(&agents, None)?;
    eprintln!("done ({:.1} s)", t.elapsed().as_secs_f64());
    let (on, off) = blocks.split_at(own);
    let mut taken: Vec<TakenPings> = files
        .into_iter()
        .map(|profiles| TakenPings {
            reports: Vec::new(),
            profiles,
            with: Vec::new(),
        })
        .collect();
    let mut off = off.iter();
    for (i, t) in turns[..own].iter().enumerate() {
        let pings = PathPings {
            ping: PingReport::concatenated(&on[i]),
            agents_off: t
                .attached
                .then(|| off.next().expect("a detached turn per attached one"))
                .map(|off| AgentsOffPings::from_blocks(&on[i], off)),
        };
        let detached = pings.agents_off.as_ref().map_or(String::new(), |off| {
            format!(" (no agent attached: {})", ping_step::summary(&off.ping))
        });
        let run = labs[t.lab];
        let twin = if run.twin { " (clean twin)" } else { "" };
        eprintln!(
            "        {:<14} {}{twin}: {}{detached}",
            run.lab.mode().name(),
            paths[t.lab][t.path].0.label(),
            ping_step::summary(&pings.ping)
        );
        taken[t.lab].reports.push(pings);
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_lab_keeps_its_name_and_the_others_are_numbered() {
        let names = LabNames::new("lab").unwrap();
        let all: Vec<String> = lab_names(&names, 3, false)
            .unwrap()
            .iter()
            .map(|n| n.lab().to_owned())
            .collect();
        assert_eq!(all, ["lab", "lab-2", "lab-3"]);
        let long = LabNames::new(&"x".repeat(24)).unwrap();
        assert!(lab_names(&long, 2, false).is_err());
        let twins: Vec<String> = lab_names(&names, 5, true)
            .unwrap()
            .iter()
            .map(|n| n.lab().to_owned())
            .collect();
        assert_eq!(twins.len(), 10);
        assert_eq!(twins[9], "lab-10");
        let longest = LabNames::new(&"x".repeat(21)).unwrap();
        assert!(lab_names(&longest, 5, true).is_ok());
        let too_long = LabNames::new(&"x".repeat(22)).unwrap();
        assert!(lab_names(&too_long, 5, true).is_err());
        assert!(lab_names(&too_long, 5, false).is_ok());
    }

    #[test]
    fn only_several_modes_pinged_in_blocks_with_detachable_agents_go_side_by_side() {
        let cfg = BenchConfig::default();
        let two = [Mode::Host, Mode::FlannelVxlan];
        assert!(applies(&two, &cfg, None));
        assert!(!applies(&two[..1], &cfg, None));
        assert!(applies(&two, &cfg, Some(&AgentTuning::default())));
        let cycled = AgentTuning {
            duty: Some(crate::agent::duty::Duty {
                on: std::time::Duration::from_millis(100),
                period: std::time::Duration::from_secs(1),
            }),
            ..AgentTuning::default()
        };
        assert!(!applies(&two, &cfg, Some(&cycled)));
        let one_piece = BenchConfig {
            ping_blocks: 1,
            ..cfg
        };
        assert!(!applies(&two, &one_piece, None));
    }
}
