//! Duty-cycle windows (see `agent::duty`): closing one detaches every link and pauses the
//! programs; opening one attaches them again and starts a new epoch.

use std::{
    sync::Mutex,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{chain, maps, netfilter, nf_fentry, tc, tracers, Inner};
use crate::agent::{expedited_rcu::ExpeditedRcu, stats::StatsGuard};

/// Runs `f` on the agent's state unless its lock is poisoned (a panic elsewhere, logged there).
pub(super) fn with_inner(inner: &Mutex<Inner>, f: fn(&mut Inner)) {
    if let Ok(mut inner) = inner.lock() {
        f(&mut inner);
    }
}

/// Ends a duty-cycle window: the programs are told to return at once (`Config::paused`) and
/// every link goes, so the datapath runs without netprof (a program that only returns still
/// costs its call on every packet). Netfilter links close at once; tc and tracepoint links
/// each wait for an RCU grace period as they close, so background threads close those while
/// the programs are paused.
pub(super) fn close_window(inner: &mut Inner) {
    if inner.windows.paused {
        return;
    }
    let started = Instant::now();
    inner.config.paused = 1;
    let config = inner.config;
    if let Err(err) = maps::write_config(&mut inner.ebpf, &config) {
        log::warn!("duty cycle: cannot pause the programs: {}", chain(&err));
    }
    inner.nf.links.clear();
    // Statistics off with the window; the sysctl fallback is shared with other holders, so it
    // stays as it is.
    if matches!(inner.stats.guard, Some(StatsGuard::Fd(_))) {
        inner.stats.guard = None;
    }
    // Detached, no program runs: nothing is counted, whatever the statistics do.
    inner.stats.time.stop();
    // tc links close under the RTNL lock, tracepoint links do not: two threads, so their RCU
    // waits overlap instead of adding up.
    let tc_links = (
        std::mem::take(&mut inner.tc.links),
        std::mem::take(&mut inner.tc.filters),
    );
    let tc_count = tc_links.0.len() + tc_links.1.len();
    let traces = (
        std::mem::take(&mut inner.dev.links),
        std::mem::take(&mut inner.tracers.classic_links),
        std::mem::take(&mut inner.tracers.btf_links),
        std::mem::take(&mut inner.fentry.links),
    );
    let count = traces.0.len() + traces.1.len() + traces.2.len() + traces.3.len();
    let edge = edge_pace(inner);
    let tc_edge = edge.clone();
    inner.windows.detaching = [
        closing_thread("tc", tc_count, move || {
            let _fast = tc_edge.map(|rcu| rcu.begin());
            drop(tc_links)
        }),
        closing_thread("tracepoint", count, move || {
            let _fast = edge.map(|rcu| rcu.begin());
            drop(traces)
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    inner.windows.attached.stop();
    inner.windows.paused = true;
    log::debug!(
        "duty cycle: window closed in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
}

/// Closes `count` links of one `family` on a thread of its own. If no thread starts, the
/// closure is dropped at once, which closes the links in the foreground.
fn closing_thread(
    family: &'static str,
    count: usize,
    close: impl FnOnce() + Send + 'static,
) -> Option<JoinHandle<()>> {
    let timed = move || {
        let started = Instant::now();
        close();
        log::debug!(
            "duty cycle: {count} {family} links closed in {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    };
    std::thread::Builder::new()
        .name(format!("netprof-detach-{family}"))
        .spawn(timed)
        .map_err(|err| log::warn!("duty cycle: closed the {family} links in the foreground: {err}"))
        .ok()
}

/// Counts one window edge and returns what makes it fast, if it was asked for and can be had.
fn edge_pace(inner: &mut Inner) -> Option<ExpeditedRcu> {
    let windows = &mut inner.windows;
    windows.edges += 1;
    if windows.expedite.is_some() {
        windows.expedited_edges += 1;
    }
    windows.expedite.clone()
}

/// Waits until the last window's links are gone (before attaching new ones: the same program
/// twice on one hook would count every packet twice).
pub(super) fn finish_detaching(inner: &mut Inner) {
    for thread in inner.windows.detaching.drain(..) {
        if thread.join().is_err() {
            log::error!("the agent's link-closing thread panicked");
        }
    }
}

/// Opens a duty-cycle window: every link again (attached while the programs are still
/// paused), then a new epoch (journeys of the last window are forgotten) with the programs
/// unpaused. A link that fails now is logged; the window goes on without it.
pub(super) fn open_window(inner: &mut Inner) {
    if !inner.windows.paused {
        return;
    }
    let started = Instant::now();
    finish_detaching(inner);
    let joined = started.elapsed();
    let _fast = edge_pace(inner).map(|rcu| rcu.begin());
    // Attached paused, then unpaused at once below: the window starts with every hook in.
    if inner.tc.loaded {
        for device in inner.registry.devices().to_vec() {
            tc::attach(inner, &device);
        }
    }
    let tc_done = started.elapsed();
    tracers::reattach_dev(inner);
    tracers::reattach(inner);
    nf_fentry::reattach(inner);
    let trace_done = started.elapsed();
    netfilter::reattach(inner);
    // Statistics in slices come on when their thread's next slice is due.
    let per_window = !inner.stats.sliced || inner.stats.full;
    if inner.stats.wanted && inner.stats.guard.is_none() && per_window {
        match StatsGuard::enable() {
            Ok(guard) => inner.stats.guard = Some(guard),
            Err(reason) => log::warn!("duty cycle: bpf_stats stay off for this window: {reason}"),
        }
    }
    inner.config.paused = 0;
    if let Err(err) = inner.new_epoch() {
        log::warn!("duty cycle: cannot start a new window: {}", chain(&err));
        return;
    }
    inner.windows.attached.start();
    if inner.stats.guard.is_some() {
        inner.stats.time.start();
    }
    inner.windows.paused = false;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    log::debug!(
        "duty cycle: window opened in {:.1} ms (waiting for the last detach {:.1}, tc {:.1}, tracepoints {:.1}, netfilter {:.1})",
        ms(started.elapsed()),
        ms(joined),
        ms(tc_done - joined),
        ms(trace_done - tc_done),
        ms(started.elapsed() - trace_done)
    );
}
