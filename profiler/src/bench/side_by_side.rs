//! Several modes without agents, side by side: every mode's lab up at once, every path of
//! every mode pinged in blocks that take turns, then each mode's iperf3 and ab on its own lab,
//! one mode at a time, each lab removed after its mode.
//!
//! The study's table and the report's clean delta compare a mode's pod path with host mode's
//! host path, which lives in another lab. Measured one mode after the other, minutes apart,
//! the two p50s took different stretches of the machine's speed: host mode's p50 without
//! agents was 6 µs in one repeat of a demo and 34-39 µs in the other two. Pinged in turns,
//! every path sees the same stretches.
//!
//! Only without agents: agents on every lab at once would each run their kernel-wide tracers
//! on every lab's packets, a cost a profiled mode measured alone does not carry.

use std::io::Write as _;
use std::time::Instant;

use super::ping_step::{self, Target};
use super::profile::AgentTuning;
use super::result::ModeResult;
use super::{
    bring_up, measure_mode, paths_of, write_result, BenchConfig, BenchError, Progress, Started,
    TakenPings,
};
use crate::lab::{self, LabError, LabLock, LabNames, Mode, PathEndpoints};
use crate::parse::ping::PingReport;
use crate::rundir::{NetPath, RunDir};

/// Whether `modes` are measured side by side: several modes, pings in blocks, no agents.
pub fn applies(modes: &[Mode], cfg: &BenchConfig, profile: Option<&AgentTuning>) -> bool {
    modes.len() > 1 && cfg.ping_blocks > 1 && profile.is_none()
}

/// The labs of `count` modes side by side: `names` itself, then `<lab>-2`, `<lab>-3`, ...
pub fn lab_names(names: &LabNames, count: usize) -> Result<Vec<LabNames>, LabError> {
    let mut all = vec![names.clone()];
    for k in 2..=count {
        all.push(LabNames::new(&format!("{}-{k}", names.lab()))?);
    }
    Ok(all)
}

/// Runs `modes` side by side; every lab is removed, also when a step fails. The caller holds
/// the first lab's lock and, on Ctrl-C, removes every lab of [`lab_names`].
pub async fn run(
    modes: &[Mode],
    cfg: &BenchConfig,
    names: &LabNames,
    out: &RunDir,
) -> Result<Vec<ModeResult>, BenchError> {
    let all = lab_names(names, modes.len())?;
    let mut locks = Vec::new();
    for extra in &all[1..] {
        locks.push(LabLock::acquire(extra.lab()).map_err(LabError::from)?);
    }
    let outcome = measure(modes, cfg, &all, out).await;
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
    let paths: Vec<Vec<(NetPath, PathEndpoints)>> =
        labs.iter().map(|(_, lab)| paths_of(lab)).collect();
    let mut pings = ping_all(cfg, &labs, &paths).await?.into_iter();
    let mut results = Vec::new();
    for ((p, (started, lab)), (names, lab_paths)) in
        progress.iter().zip(labs).zip(all.iter().zip(&paths))
    {
        let mode_pings: Vec<PingReport> = pings.by_ref().take(lab_paths.len()).collect();
        let taken = TakenPings {
            reports: mode_pings,
            with: modes.iter().copied().filter(|&m| m != p.mode).collect(),
        };
        let outcome = measure_mode(p, cfg, &lab, out, None, Some(taken), started).await;
        // Done with this mode: its lab goes now, the others stay for their turn.
        let teardown = lab::down(names);
        let result = outcome?;
        teardown?;
        write_result(out, &result)?;
        results.push(result);
    }
    Ok(results)
}

/// Every path of every lab pinged in turns; the reports in the labs' and paths' order.
async fn ping_all(
    cfg: &BenchConfig,
    labs: &[(Started, lab::Lab)],
    paths: &[Vec<(NetPath, PathEndpoints)>],
) -> Result<Vec<PingReport>, BenchError> {
    let targets: Vec<Target> = labs
        .iter()
        .zip(paths)
        .flat_map(|((_, lab), lab_paths)| {
            lab_paths.iter().map(|(path, endpoints)| Target {
                mode: lab.mode(),
                path: *path,
                endpoints,
            })
        })
        .collect();
    eprint!(
        "[pings] {} paths of {} modes side by side, {} ... ",
        targets.len(),
        labs.len(),
        ping_step::describe(cfg, targets.len())
    );
    let _ = std::io::stderr().flush();
    let t = Instant::now();
    let pings: Vec<PingReport> = ping_step::ping_in_blocks(cfg, &targets, |_| Ok(()))
        .await
        .inspect_err(|_| eprintln!("failed"))?
        .iter()
        .map(|blocks| PingReport::concatenated(blocks))
        .collect();
    eprintln!("done ({:.1} s)", t.elapsed().as_secs_f64());
    for (target, ping) in targets.iter().zip(&pings) {
        eprintln!(
            "        {:<14} {}: {}",
            target.mode.name(),
            target.path.label(),
            ping_step::summary(ping)
        );
    }
    Ok(pings)
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
    fn only_several_modes_pinged_in_blocks_without_agents_go_side_by_side() {
        let cfg = BenchConfig::default();
        let two = [Mode::Host, Mode::FlannelVxlan];
        assert!(applies(&two, &cfg, None));
        assert!(!applies(&two[..1], &cfg, None));
        assert!(!applies(&two, &cfg, Some(&AgentTuning::default())));
        let one_piece = BenchConfig {
            ping_blocks: 1,
            ..cfg
        };
        assert!(!applies(&two, &one_piece, None));
    }
}
