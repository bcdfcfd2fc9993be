//! The tracing families: the journey ends (skb free and consume: where each followed packet's
//! journey becomes segments), the retransmit counter, and the optional tp_btf device hooks
//! (`--hooks dev`). tp_btf where it loads; the classic tracepoints (which need tracefs for their
//! field offsets) where it does not.

use aya::programs::{
    tp_btf::BtfTracePointLink, trace_point::TracePointLink, BtfTracePoint, TracePoint,
};

use super::{chain, Inner};
use crate::agent::{
    report::Via, PROG_BACKLOG, PROG_CONSUME_SKB, PROG_CONSUME_SKB_BTF, PROG_DELIVER_BTF,
    PROG_DEV_RX, PROG_DEV_TX, PROG_KFREE_SKB, PROG_KFREE_SKB_BTF, PROG_TCP_RETRANSMIT, TP_BACKLOG,
    TP_DELIVER, TP_DEV_RX, TP_DEV_TX,
};

const MISSING: &str = "the program is missing from netprof's eBPF object: rebuild netprof";

/// The tracepoints: tp_btf program (preferred; `None`: classic only), classic program, group,
/// event.
pub(super) const TRACEPOINTS: [(Option<&str>, &str, &str, &str); 3] = [
    (Some(PROG_KFREE_SKB_BTF), PROG_KFREE_SKB, "skb", "kfree_skb"),
    (
        Some(PROG_CONSUME_SKB_BTF),
        PROG_CONSUME_SKB,
        "skb",
        "consume_skb",
    ),
    (None, PROG_TCP_RETRANSMIT, "tcp", "tcp_retransmit_skb"),
];

/// A tracepoint program the agent attached, to attach again when a duty-cycle window opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TraceProgram {
    Btf {
        program: &'static str,
    },
    Classic {
        program: &'static str,
        group: &'static str,
        event: &'static str,
    },
}

/// The journey-end and retransmit tracers' state.
#[derive(Debug, Default)]
pub(super) struct TracerFamily {
    pub btf_links: Vec<BtfTracePointLink>,
    pub classic_links: Vec<TracePointLink>,
    /// The programs attached (each window attaches them again).
    pub programs: Vec<TraceProgram>,
    /// Journeys end at `consumed` (a consume tracer is attached).
    pub consume_attached: bool,
    /// The veths' backlog checkpoints fire (`netif_rx` is traced).
    pub backlog_attached: bool,
}

impl TracerFamily {
    /// How journeys' ends are traced: the BTF tracepoint, or the classic one without BTF.
    pub fn consume_via(&self) -> Via {
        let btf = self.programs.contains(&TraceProgram::Btf {
            program: PROG_CONSUME_SKB_BTF,
        });
        if btf {
            Via::TpBtf
        } else {
            Via::Tracepoint
        }
    }
}

/// The tp_btf device hooks' state.
#[derive(Debug, Default)]
pub(super) struct DevFamily {
    pub links: Vec<BtfTracePointLink>,
    pub attached: bool,
}

fn btf_program<'a>(inner: &'a mut Inner, program: &str) -> Option<&'a mut BtfTracePoint> {
    inner
        .ebpf
        .program_mut(program)
        .and_then(|p| <&mut BtfTracePoint>::try_from(p).ok())
}

/// The tp_btf device hooks on `netif_receive_skb` / `net_dev_start_xmit`.
pub(super) fn attach_dev(inner: &mut Inner) {
    let btf = match aya::Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(err) => {
            inner.not_measured("dev-rx/dev-tx checkpoints", chain(&err));
            return;
        }
    };
    for (program, tracepoint) in [(PROG_DEV_RX, TP_DEV_RX), (PROG_DEV_TX, TP_DEV_TX)] {
        let result = match btf_program(inner, program) {
            Some(p) => p
                .load(tracepoint, &btf)
                .and_then(|()| p.attach())
                .and_then(|id| p.take_link(id))
                .map_err(|e| chain(&e)),
            None => Err(MISSING.into()),
        };
        match result {
            Ok(link) => {
                inner.dev.links.push(link);
                inner.dev.attached = true;
            }
            Err(reason) => inner.not_measured(format!("tp_btf {tracepoint} ({program})"), reason),
        }
    }
}

/// Attaches the loaded device hooks again (a duty-cycle window opening).
pub(super) fn reattach_dev(inner: &mut Inner) {
    if !inner.dev.attached {
        return;
    }
    for program in [PROG_DEV_RX, PROG_DEV_TX] {
        if let Some(p) = btf_program(inner, program) {
            match p.attach().and_then(|id| p.take_link(id)) {
                Ok(link) => inner.dev.links.push(link),
                Err(err) => log::warn!("duty cycle: {program}: {}", chain(&err)),
            }
        }
    }
}

/// Journey ends (kfree_skb, consume_skb) as tp_btf, else as classic tracepoints; the
/// retransmit counter as a classic tracepoint. `tracefs_error`: why the classic ones cannot be
/// used, if they cannot.
pub(super) fn attach(inner: &mut Inner, tracefs_error: Option<String>) {
    let btf = aya::Btf::from_sys_fs().map_err(|e| chain(&e));
    for (btf_name, program, group, event) in TRACEPOINTS {
        let mut reasons = Vec::new();
        if let Some(btf_name) = btf_name {
            let loaded = match &btf {
                Ok(btf) => match btf_program(inner, btf_name) {
                    Some(p) => p.load(event, btf).map_err(|e| chain(&e)),
                    None => Err(MISSING.into()),
                },
                Err(reason) => Err(reason.clone()),
            };
            let attached =
                loaded.and_then(|()| attach_one(inner, TraceProgram::Btf { program: btf_name }));
            match attached {
                Ok(()) => continue,
                Err(reason) => reasons.push(format!("tp_btf: {reason}")),
            }
        }
        let classic = TraceProgram::Classic {
            program,
            group,
            event,
        };
        let result = match &tracefs_error {
            Some(reason) => Err(reason.clone()),
            None => match inner
                .ebpf
                .program_mut(program)
                .and_then(|p| <&mut TracePoint>::try_from(p).ok())
            {
                Some(p) => p.load().map_err(|e| chain(&e)),
                None => Err(MISSING.into()),
            }
            .and_then(|()| attach_one(inner, classic)),
        };
        if let Err(reason) = result {
            reasons.push(format!("tracepoint: {reason}"));
            inner.not_measured(format!("{group}:{event} ({program})"), reasons.join("; "));
        }
    }
}

/// Loads a tp_btf-only tracer on `tracepoint` and attaches it.
fn attach_btf_only(
    inner: &mut Inner,
    program: &'static str,
    tracepoint: &str,
) -> Result<(), String> {
    match aya::Btf::from_sys_fs() {
        Ok(btf) => match btf_program(inner, program) {
            Some(p) => p.load(tracepoint, &btf).map_err(|e| chain(&e)),
            None => Err(MISSING.into()),
        },
        Err(err) => Err(chain(&err)),
    }
    .and_then(|()| attach_one(inner, TraceProgram::Btf { program }))
}

/// The delivery tracer (tp_btf only): journeys of packets read from a socket end there. Without
/// it they end at their free where the kernel traces it; it is said in the document.
pub(super) fn attach_delivery(inner: &mut Inner) {
    if let Err(reason) = attach_btf_only(inner, PROG_DELIVER_BTF, TP_DELIVER) {
        inner.not_measured(
            format!("tp_btf {TP_DELIVER} ({PROG_DELIVER_BTF}): journeys end only at their free"),
            reason,
        );
    }
}

/// The backlog tracer (tp_btf only): a veth's frame queued for the receive softirq. Without it
/// the wait stays inside the crossing's segment; it is said in the document.
pub(super) fn attach_backlog(inner: &mut Inner) {
    match attach_btf_only(inner, PROG_BACKLOG, TP_BACKLOG) {
        Ok(()) => inner.tracers.backlog_attached = true,
        Err(reason) => inner.not_measured(
            format!(
                "tp_btf {TP_BACKLOG} ({PROG_BACKLOG}): a veth's backlog wait stays in its crossing"
            ),
            reason,
        ),
    }
}

/// Attaches the loaded tracers again (a duty-cycle window opening).
pub(super) fn reattach(inner: &mut Inner) {
    for which in inner.tracers.programs.clone() {
        if let Err(reason) = attach_one(inner, which) {
            log::warn!("duty cycle: {which:?}: {reason}");
        }
    }
}

/// Attaches a loaded tracepoint program and remembers it (for the next duty-cycle window).
fn attach_one(inner: &mut Inner, which: TraceProgram) -> Result<(), String> {
    match which {
        TraceProgram::Btf { program } => {
            let p = btf_program(inner, program).ok_or(MISSING)?;
            let link = p
                .attach()
                .and_then(|id| p.take_link(id))
                .map_err(|e| chain(&e))?;
            inner.tracers.btf_links.push(link);
        }
        TraceProgram::Classic {
            program,
            group,
            event,
        } => {
            let p = inner
                .ebpf
                .program_mut(program)
                .and_then(|p| <&mut TracePoint>::try_from(p).ok())
                .ok_or(MISSING)?;
            let link = p
                .attach(group, event)
                .and_then(|id| p.take_link(id))
                .map_err(|e| chain(&e))?;
            inner.tracers.classic_links.push(link);
        }
    }
    let tracers = &mut inner.tracers;
    if !tracers.programs.contains(&which) {
        tracers.programs.push(which);
    }
    if matches!(
        which,
        TraceProgram::Btf {
            program: PROG_CONSUME_SKB_BTF
        } | TraceProgram::Classic {
            program: PROG_CONSUME_SKB,
            ..
        }
    ) {
        tracers.consume_attached = true;
    }
    Ok(())
}
