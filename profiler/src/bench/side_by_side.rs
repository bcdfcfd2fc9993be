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

use std::io::Write as _;
use std::time::Instant;

use super::ping_step::{self, Around, PathPings, Target};
use super::profile::{self, AgentTuning, Profiler};
use super::result::{AgentsOffPings, ModeResult};
use super::{
    bring_up, measure_mode, paths_of, start_profiler, write_result, BenchConfig, BenchError,
    Progress, Started, TakenPings,
};
use crate::lab::{self, LabError, LabLock, LabNames, Mode, PathEndpoints};
use crate::parse::ping::PingReport;
use crate::rundir::{NetPath, ProfileFile, RunDir, Tool};

/// Whether `modes` are measured side by side: several modes, pings in blocks, and agents (if
/// any) that can be detached on demand (a duty cycle's thread owns its agents' links).
pub fn applies(modes: &[Mode], cfg: &BenchConfig, profile: Option<&AgentTuning>) -> bool {
    modes.len() > 1 && cfg.ping_blocks > 1 && profile.is_none_or(|t| t.duty.is_none())
}

/// The labs of `count` modes side by side: `names` itself, then `<lab>-2`, `<lab>-3`, ...
pub fn lab_names(names: &LabNames, count: usize) -> Result<Vec<LabNames>, LabError> {
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
    let all = lab_names(names, modes.len())?;
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

async fn measure(
    modes: &[Mode],
    cfg: &BenchConfig,
    all: &[LabNames],
    out: &RunDir,
    profile: Option<&AgentTuning>,
) -> Result<Vec<ModeResult>, BenchError> {
    let progress: Vec<Progress> = modes
        .iter()
        .enumerate()
        .map(|(i, &mode)| Progress {
            index: i + 1,
            total: modes.len(),
            mode,
        })
        .collect();
    let mut labs = Vec::new();
    for (p, names) in progress.iter().zip(all) {
        labs.push((Started::now(), bring_up(p, cfg, names)?));
    }
    let mut profilers = Vec::new();
    for (p, (_, lab)) in progress.iter().zip(&labs) {
        profilers.push(match profile {
            Some(tuning) => {
                let profiler = start_profiler(p, lab, out, tuning)?;
                // Until its lab's turn, nothing of it is in any path.
                set_attached(&profiler, lab.mode(), false)?;
                Some(profiler)
            }
            None => None,
        });
    }
    let paths: Vec<Vec<(NetPath, PathEndpoints)>> =
        labs.iter().map(|(_, lab)| paths_of(lab)).collect();
    let mut pings = ping_all(cfg, &labs, &paths, &profilers).await?.into_iter();
    let mut results = Vec::new();
    for (((p, (started, lab)), names), profiler) in
        progress.iter().zip(labs).zip(all).zip(profilers)
    {
        let taken = TakenPings {
            with: modes.iter().copied().filter(|&m| m != p.mode).collect(),
            ..pings.next().expect("pings for every lab")
        };
        if let Some(profiler) = &profiler {
            set_attached(profiler, p.mode, true)?;
        }
        let outcome = measure_mode(p, cfg, &lab, profiler, Some(taken), started).await;
        // Done with this mode: its lab goes now (its agents went with `measure_mode`), the
        // others stay for their turn.
        let teardown = lab::down(names);
        let result = outcome?;
        teardown?;
        write_result(out, &result)?;
        results.push(result);
    }
    Ok(results)
}

fn set_attached(profiler: &Profiler, mode: Mode, attached: bool) -> Result<(), BenchError> {
    profiler
        .set_attached(attached)
        .map_err(|source| BenchError::Profile { mode, source })
}

/// Every path of every lab pinged in turns (and, with agents, once more with none attached);
/// each lab's pings in its paths' order, with its agents' reports of the profiled blocks.
async fn ping_all(
    cfg: &BenchConfig,
    labs: &[(Started, lab::Lab)],
    paths: &[Vec<(NetPath, PathEndpoints)>],
    profilers: &[Option<Profiler>],
) -> Result<Vec<TakenPings>, BenchError> {
    let profiled = profilers.iter().any(Option::is_some);
    // (lab, path) of each target; targets `n..2n` are the same paths with no agent attached.
    let mut of: Vec<(usize, usize)> = paths
        .iter()
        .enumerate()
        .flat_map(|(l, lab_paths)| (0..lab_paths.len()).map(move |k| (l, k)))
        .collect();
    let n = of.len();
    if profiled {
        of.extend_from_within(..);
    }
    let targets: Vec<Target> = of
        .iter()
        .map(|&(l, k)| Target {
            mode: labs[l].1.mode(),
            path: paths[l][k].0,
            endpoints: &paths[l][k].1,
        })
        .collect();
    let mut flows = Vec::new();
    for &(l, k) in &of[..n] {
        flows.push(match profilers[l] {
            Some(_) => {
                profile::step_flows(&labs[l].1, &paths[l][k].1, Tool::Ping).map_err(|source| {
                    BenchError::Profile {
                        mode: labs[l].1.mode(),
                        source,
                    }
                })?
            }
            None => Vec::new(),
        });
    }
    let off_note = if profiled {
        ", each lab's agents attached in its turns, and with none attached in turns too"
    } else {
        ""
    };
    eprint!(
        "[pings] {n} paths of {} modes side by side{off_note}, {} ... ",
        labs.len(),
        ping_step::describe(cfg, targets.len())
    );
    let _ = std::io::stderr().flush();
    let t = Instant::now();
    let mut files: Vec<Vec<ProfileFile>> = vec![Vec::new(); labs.len()];
    // Every lab has its agents or none has: lab `l`'s are `agents[l]`.
    let agents: Vec<&Profiler> = profilers.iter().flatten().collect();
    let blocks = ping_step::ping_in_blocks(cfg, &targets, |at| {
        let i = match at {
            Around::Before(i) | Around::After(i, _) => i,
        };
        let (l, k) = of[i];
        let mode = labs[l].1.mode();
        let err = |source| BenchError::Profile { mode, source };
        match at {
            // A lab's profiled block: its agents alone attached. A block with no agent: none.
            Around::Before(_) => {
                profile::attach_only(&agents, (i < n).then_some(l))?;
                match profilers[l].as_ref().filter(|_| i < n) {
                    Some(p) => p.before_step(&flows[i]).map_err(err),
                    None => Ok(()),
                }
            }
            Around::After(_, block) => {
                if let Some(p) = profilers[l].as_ref().filter(|_| i < n) {
                    files[l].extend(
                        p.after_step_part(paths[l][k].0, Tool::Ping, block)
                            .map_err(err)?,
                    );
                }
                Ok(())
            }
        }
    })
    .await
    .inspect_err(|_| eprintln!("failed"))?;
    profile::attach_only(&agents, None)?;
    eprintln!("done ({:.1} s)", t.elapsed().as_secs_f64());
    let (on, off) = blocks.split_at(n);
    let mut taken: Vec<TakenPings> = files
        .into_iter()
        .map(|profiles| TakenPings {
            reports: Vec::new(),
            profiles,
            with: Vec::new(),
        })
        .collect();
    for (i, &(l, k)) in of[..n].iter().enumerate() {
        let pings = PathPings {
            ping: PingReport::concatenated(&on[i]),
            agents_off: off
                .get(i)
                .map(|off| AgentsOffPings::from_blocks(&on[i], off)),
        };
        let detached = pings.agents_off.as_ref().map_or(String::new(), |off| {
            format!(" (no agent attached: {})", ping_step::summary(&off.ping))
        });
        eprintln!(
            "        {:<14} {}: {}{detached}",
            labs[l].1.mode().name(),
            paths[l][k].0.label(),
            ping_step::summary(&pings.ping)
        );
        taken[l].reports.push(pings);
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_lab_keeps_its_name_and_the_others_are_numbered() {
        let names = LabNames::new("lab").unwrap();
        let all: Vec<String> = lab_names(&names, 3)
            .unwrap()
            .iter()
            .map(|n| n.lab().to_owned())
            .collect();
        assert_eq!(all, ["lab", "lab-2", "lab-3"]);
        let long = LabNames::new(&"x".repeat(24)).unwrap();
        assert!(lab_names(&long, 2).is_err());
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
