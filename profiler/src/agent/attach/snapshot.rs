//! The agent's document from the maps and the families' state: checkpoints with their hits,
//! named segments, counters, drops, what was not measured and each program's own cost.

use std::collections::HashMap as StdHashMap;

use profiler_common::datapath::{
    NF_GAUGE_HOOK, NF_GAUGE_PRIORITY, NF_POINT_PRIORITIES, SEGMENT_INBOUND,
};

use super::Inner;
use crate::agent::{
    collect,
    journey_log::Tally,
    report::{
        AgentReport, CheckpointReport, DropReport, DutyReport, ProgramStats, SegmentReport, Via,
        SCHEMA,
    },
    stages::{DeviceHook, Place, NF_HOOK_NAMES},
    AgentError,
};

pub(super) fn report(
    inner: &Inner,
    journeys: &Tally,
    node: &str,
    netns: &str,
    kernel: &str,
    attach_ms: f64,
) -> Result<AgentReport, AgentError> {
    let hits = &journeys.hits();
    let segments = &journeys.segments();
    let mut counters = collect::read_counters(&inner.ebpf)?;
    counters.out_of_order = journeys.out_of_order;
    if journeys.malformed > 0 {
        log::warn!(
            "{} journey log records were too short to read: is the kernel object another \
             netprof version's?",
            journeys.malformed
        );
    }
    let drops = &journeys.drops;
    let catalog = &inner.catalog;

    let mut checkpoints: Vec<CheckpointReport> = catalog
        .iter()
        .filter(|(id, place)| is_watched(inner, *id, place) || hits.contains_key(id))
        .map(|(id, place)| {
            let mut count = hits.get(&id).copied().unwrap_or(0);
            // The kernel counts the end of a journey as `completed`, not as a hit.
            if *place == Place::Consumed && count == 0 {
                count = counters.completed;
            }
            checkpoint_report(id, place, count, via_of(inner, place))
        })
        .collect();
    // Ids the kernel counted that the catalog does not know (should not happen).
    for (id, count) in hits {
        if catalog.get(*id).is_none() {
            checkpoints.push(CheckpointReport {
                id: *id,
                name: catalog.name(*id),
                kind: "unknown".into(),
                device: None,
                role: None,
                hook: None,
                priority: None,
                via: None,
                hits: *count,
            });
        }
    }
    let segments = segments
        .iter()
        .map(|((key_from, to), hist)| {
            let summary = collect::summarize(hist);
            let from = key_from & !SEGMENT_INBOUND;
            SegmentReport {
                from,
                to: *to,
                inbound: key_from & SEGMENT_INBOUND != 0,
                from_name: catalog.name(from),
                to_name: catalog.name(*to),
                stage: catalog.stage(from, *to),
                count: summary.count,
                mean_ns: summary.mean_ns,
                p50_ns: summary.p50_ns,
                p90_ns: summary.p90_ns,
                p99_ns: summary.p99_ns,
                buckets: summary.buckets,
            }
        })
        .collect();
    let drops = drops
        .iter()
        .map(|((cp, reason), count)| DropReport {
            checkpoint: *cp,
            checkpoint_name: catalog.name(*cp),
            reason: *reason,
            reason_name: inner
                .drop_reasons
                .get(reason)
                .cloned()
                .unwrap_or_else(|| format!("reason {reason}")),
            count: *count,
        })
        .collect();
    let windows = &inner.windows;
    Ok(AgentReport {
        schema: SCHEMA.to_owned(),
        node: node.to_owned(),
        netns: netns.to_owned(),
        kernel: kernel.to_owned(),
        attach_ms,
        elapsed_s: inner.since.elapsed().as_secs_f64(),
        flows: inner.flows.iter().map(ToString::to_string).collect(),
        sample: inner.sample,
        checkpoints,
        segments,
        counters,
        drops,
        not_measured: inner.not_measured.clone(),
        programs: program_stats(inner),
        stats_s: inner
            .stats
            .wanted
            .then(|| inner.stats.time.total().as_secs_f64()),
        duty: windows.duty.map(|duty| DutyReport {
            percent: duty.percent(),
            period_ms: duty.period.as_millis() as u64,
            windows: windows.attached.windows,
            attached_s: windows.attached.total().as_secs_f64(),
            expedited_edges: windows.expedited_edges,
            edges: windows.edges,
        }),
    })
}

/// Whether a catalog entry is one this agent actually watches (attached), for the report.
fn is_watched(inner: &Inner, id: u16, place: &Place) -> bool {
    match place {
        Place::Netfilter { hook, point } => inner.nf.attached.contains(&(*hook, *point)),
        Place::Gauge => inner.nf.gauge_attached,
        Place::Consumed => inner.tracers.consume_attached,
        Place::Device { hook, .. } => {
            if !inner.registry.devices().iter().any(|d| d.id(*hook) == id) {
                return false;
            }
            match hook {
                DeviceHook::DevRx | DeviceHook::DevTx => inner.dev.attached,
                DeviceHook::TcIngress | DeviceHook::TcEgress => inner.tc.attached.contains(&id),
                DeviceHook::Backlog => {
                    inner.tracers.backlog_attached
                        && inner
                            .registry
                            .devices()
                            .iter()
                            .any(|d| d.id(*hook) == id && d.found.link.receives_through_backlog())
                }
            }
        }
    }
}

/// The mechanism a checkpoint is attached with here.
fn via_of(inner: &Inner, place: &Place) -> Option<Via> {
    match place {
        Place::Device { hook, .. } => Some(match hook {
            DeviceHook::DevRx | DeviceHook::DevTx | DeviceHook::Backlog => Via::TpBtf,
            DeviceHook::TcIngress | DeviceHook::TcEgress => inner.tc.via(),
        }),
        // The fentry fallback replaces the links wholesale (it is loaded only without them).
        Place::Netfilter { .. } if !inner.fentry.programs.is_empty() => Some(Via::Fentry),
        Place::Netfilter { .. } | Place::Gauge => Some(Via::NetfilterLink),
        Place::Consumed => Some(inner.tracers.consume_via()),
    }
}

fn checkpoint_report(id: u16, place: &Place, hits: u64, via: Option<Via>) -> CheckpointReport {
    let (device, role, hook, priority) = match place {
        Place::Device { device, .. } => (
            Some(device.label.clone()),
            Some(
                serde_json::to_value(device.role)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            ),
            None,
            None,
        ),
        Place::Netfilter { hook, point } => (
            None,
            None,
            Some(NF_HOOK_NAMES[*hook as usize].to_owned()),
            Some(NF_POINT_PRIORITIES[*point as usize]),
        ),
        Place::Gauge => (
            None,
            None,
            Some(NF_HOOK_NAMES[NF_GAUGE_HOOK as usize].to_owned()),
            Some(NF_GAUGE_PRIORITY),
        ),
        Place::Consumed => (None, None, None, None),
    };
    CheckpointReport {
        id,
        name: place.name(),
        kind: place.kind().to_owned(),
        device,
        role,
        hook,
        priority,
        via,
        hits,
    }
}

fn program_stats(inner: &Inner) -> Vec<ProgramStats> {
    let mut out = Vec::new();
    let stat = |name: String, id: u32, run_count: u64, run_time_ns: u64| ProgramStats {
        name,
        id,
        run_count,
        run_time_ns,
        ns_per_run: if run_count > 0 {
            run_time_ns as f64 / run_count as f64
        } else {
            0.0
        },
    };
    for (name, program) in inner.ebpf.programs() {
        if let Ok(info) = program.info() {
            out.push(stat(
                name.to_owned(),
                info.id(),
                info.run_count(),
                info.run_time().as_nanos() as u64,
            ));
        }
    }
    let nf_ids: StdHashMap<u32, &str> = inner
        .nf
        .program_ids()
        .chain(inner.fentry.programs.iter().flat_map(|p| p.program_ids()))
        .collect();
    if !nf_ids.is_empty() {
        for info in aya::programs::loaded_programs().flatten() {
            if let Some(name) = nf_ids.get(&info.id()) {
                out.push(stat(
                    (*name).to_owned(),
                    info.id(),
                    info.run_count(),
                    info.run_time().as_nanos() as u64,
                ));
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
