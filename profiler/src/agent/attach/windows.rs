//! Duty-cycle windows (see `agent::duty`): closing one detaches every link and pauses the
//! programs; opening one attaches them again and starts a new epoch.

use super::*;

/// Runs `f` on the agent's state unless its lock is poisoned (a panic elsewhere, logged there).
pub(super) fn with_inner(inner: &Mutex<Inner>, f: fn(&mut Inner)) {
    if let Ok(mut inner) = inner.lock() {
        f(&mut inner);
    }
}

/// Ends a duty-cycle window: the programs are told to return at once (`Config::paused`) and
/// every link goes, so the datapath runs without netprof (a program that
/// only returns still costs its call on every packet). Netfilter links close at once; tc and
/// tracepoint links each wait for an RCU grace period as they close (~300 ms for a node's
/// set, measured), so a background thread closes those while the programs are paused.
pub(super) fn close_window(inner: &mut Inner) {
    if inner.paused {
        return;
    }
    let started = Instant::now();
    inner.config.paused = 1;
    let config = inner.config;
    if let Err(err) = write_config_only(&mut inner.ebpf, &config) {
        log::warn!("duty cycle: cannot pause the programs: {}", chain(&err));
    }
    inner.nf_links.clear();
    let (tc, tp, trace, trace_btf) = (
        std::mem::take(&mut inner.tc_links),
        std::mem::take(&mut inner.tp_links),
        std::mem::take(&mut inner.trace_links),
        std::mem::take(&mut inner.trace_btf_links),
    );
    inner.detaching = std::thread::Builder::new()
        .name("netprof-detach".into())
        .spawn(move || drop((tc, tp, trace, trace_btf)))
        .map_err(|err| log::warn!("duty cycle: closing links in the foreground: {err}"))
        .ok();
    inner.attached.stop();
    inner.paused = true;
    log::debug!("duty cycle: window closed in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
}

/// Waits until the last window's links are gone (before attaching new ones: the same program
/// twice on one hook would count every packet twice).
pub(super) fn finish_detaching(inner: &mut Inner) {
    if let Some(thread) = inner.detaching.take() {
        if thread.join().is_err() {
            log::error!("the agent's link-closing thread panicked");
        }
    }
}

/// Opens a duty-cycle window: every link again (attached while the programs are still
/// paused), then a new epoch (journeys of the last window are forgotten) with the programs
/// unpaused. A link that fails now is logged;
/// the window goes on without it.
pub(super) fn open_window(inner: &mut Inner) {
    if !inner.paused {
        return;
    }
    let started = Instant::now();
    finish_detaching(inner);
    // Attached paused, then unpaused at once below: the window starts with every hook in.
    let devices: Vec<Device> = inner.registry.devices().to_vec();
    if inner.tc_loaded {
        for device in &devices {
            attach_tc(inner, device);
        }
    }
    if inner.tp_attached {
        for program in [PROG_DEV_RX, PROG_DEV_TX] {
            if let Some(p) = inner.ebpf.program_mut(program).and_then(|p| <&mut BtfTracePoint>::try_from(p).ok()) {
                match p.attach().and_then(|id| p.take_link(id)) {
                    Ok(link) => inner.tp_links.push(link),
                    Err(err) => log::warn!("duty cycle: {program}: {}", chain(&err)),
                }
            }
        }
    }
    for which in inner.trace_programs.clone() {
        if let Err(reason) = attach_trace(inner, which) {
            log::warn!("duty cycle: {which:?}: {reason}");
        }
    }
    if !inner.nf_attached.is_empty() {
        match inner.node_netns.enter_if_elsewhere() {
            Ok(guard) => {
                let mut links = Vec::new();
                for ((hook, point), program) in inner.nf_points.iter().zip(&inner.nf_programs) {
                    if !inner.nf_attached.contains(&(*hook, *point)) {
                        continue;
                    }
                    match program.attach(hook_of(*hook), NF_POINT_PRIORITIES[*point as usize]) {
                        Ok(link) => links.push(link),
                        Err(err) => log::warn!("duty cycle: {}: {}", program.name(), chain(&err)),
                    }
                }
                drop(guard);
                inner.nf_links.extend(links);
            }
            Err(err) => log::warn!("duty cycle: netfilter: {}", chain(&err)),
        }
    }
    inner.config.epoch = inner.config.epoch.wrapping_add(1);
    inner.config.paused = 0;
    let config = inner.config;
    if let Err(err) = write_config_only(&mut inner.ebpf, &config) {
        log::warn!("duty cycle: cannot start a new window: {}", chain(&err));
        return;
    }
    inner.attached.start();
    inner.paused = false;
    log::debug!("duty cycle: window opened in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
}

