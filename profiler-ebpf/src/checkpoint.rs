//! The datapath profiler's shared kernel core (contract: `profiler_common::datapath`): the maps
//! and the per-packet steps every checkpoint program runs.
//!
//! Both objects include this file (`main.rs` for the programs aya loads, `nf_main.rs` for the
//! netfilter ones), so each object declares the same maps under the same names and user space
//! loads the netfilter object reusing the aya object's maps: one set of maps in the kernel.
//!
//! Because netprof's netfilter loader knows no globals, no BTF maps and no bpf-to-bpf calls,
//! everything here is `#[inline(always)]`, settings come from `NP_CONFIG` (not globals), and
//! nothing may panic (a panic path would be a call to the panic handler).
//!
//! The per-packet path, cheapest first:
//! - every checkpoint reads the packet's tag (`followed`): a packet whose skb address is not
//!   in its slot of `NP_TAGS` is not followed and leaves, before any helper call or hash
//!   lookup, and without reading the clock;
//! - a followed packet appends (checkpoint, time) to its journey (`record`);
//! - only where a path starts does an unfollowed packet's header get parsed and its flow
//!   looked up (`admit_if_followed`, in `flows`);
//! - when the skb is freed, its journey is handed whole to the caller's log in one place
//!   (`end_journey`); segments and histograms are user space's work.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_probe_read_kernel},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use profiler_common::{
    datapath::{
        journey_slot, Config, FlowKey, FlowRule, Journey, Scratch, COUNTER_ABANDONED,
        COUNTER_ADMITTED, COUNTER_COUNT, COUNTER_JOURNEY_LONG, COUNTER_LOG_FULL,
        COUNTER_READ_ERRORS, COUNTER_REPEATS, COUNTER_SLOT_BUSY, CP_NONE, END_DROPPED,
        JOURNEY_SLOTS, MAP_CONFIG, MAP_COUNTERS, MAP_FLOWS, MAP_JOURNEYS, MAP_SCRATCH, MAP_TAGS,
        MAX_FLOWS, SEGMENT_INBOUND,
    },
    names_match,
};

#[map]
pub static NP_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
pub static NP_FLOWS: HashMap<FlowKey, FlowRule> = HashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
pub static NP_TAGS: Array<u64> = Array::with_max_entries(JOURNEY_SLOTS, 0);
#[map]
pub static NP_JOURNEYS: Array<Journey> = Array::with_max_entries(JOURNEY_SLOTS, 0);
#[map]
pub static NP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);
#[map]
pub static NP_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const _: () = assert!(names_match(stringify!(NP_CONFIG), MAP_CONFIG));
const _: () = assert!(names_match(stringify!(NP_FLOWS), MAP_FLOWS));
const _: () = assert!(names_match(stringify!(NP_TAGS), MAP_TAGS));
const _: () = assert!(names_match(stringify!(NP_JOURNEYS), MAP_JOURNEYS));
const _: () = assert!(names_match(stringify!(NP_COUNTERS), MAP_COUNTERS));
const _: () = assert!(names_match(stringify!(NP_SCRATCH), MAP_SCRATCH));

/// The configuration; `None` until user space wrote it (the array's zeroed entry has
/// `skb_head == 0`, which no real kernel has) and between duty-cycle windows (`paused`).
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let cfg = NP_CONFIG.get(0)?;
    (cfg.skb_head != 0 && cfg.paused == 0).then_some(cfg)
}

/// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, comparable across CPUs.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// A value the verifier must see bounded even where the compiler could prove the bound: a
/// volatile read keeps the check that follows in the program.
#[inline(always)]
pub fn opaque<T: Copy>(value: T) -> T {
    // SAFETY: reading a live local.
    unsafe { core::ptr::read_volatile(&value) }
}

// ---- the tag check: what every packet pays ----

/// This CPU's scratch space.
#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: this CPU's value of a per-CPU array. Programs that interrupt this one on the
    // same CPU use the frames above `level` only (see `Scratch`).
    NP_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Stores `value` where programs interrupting this one will see it: the compiler must not
/// drop or delay a store only other programs read.
#[inline(always)]
fn publish(place: &mut u64, value: u64) {
    // SAFETY: a plain store to a live map value.
    unsafe { core::ptr::write_volatile(place, value) }
}

/// The address of the `struct sk_buff` a program was handed (its context, or an argument),
/// as a plain number. The verifier treats it as a pointer, on which no hash may be computed;
/// stored into this CPU's scratch frame and read back it is a number (programs loaded by
/// root may do this). The per-CPU array lookup is inlined by newer kernels' verifiers.
#[inline(always)]
pub fn skb_address(pointer: u64) -> Option<u64> {
    let scratch = scratch()?;
    let level = opaque(scratch.level) as usize;
    let frame = &mut scratch.frames.get_mut(level)?.pointer;
    publish(&mut scratch.level, level as u64 + 1);
    publish(frame, pointer);
    // SAFETY: reading back a live map value.
    let value = unsafe { core::ptr::read_volatile(frame) };
    publish(&mut scratch.level, level as u64);
    Some(value)
}

/// The slot of `skb` (an address from [`skb_address`]) when it is followed (its address is its
/// slot's tag), else `None`: the one check an unfollowed packet pays (an array read the
/// verifier inlines).
#[inline(always)]
pub fn followed(skb: u64) -> Option<u32> {
    let slot = journey_slot(skb);
    let tag = NP_TAGS.get(slot)?;
    (*tag == skb).then_some(slot)
}

/// Frees a journey's slot.
#[inline(always)]
fn release(slot: u32) {
    if let Some(tag) = NP_TAGS.get_ptr_mut(slot) {
        // SAFETY: a value of a live array map; a plain store of 8 aligned bytes.
        unsafe { *tag = 0 };
    }
}

// ---- following a packet ----

/// The followed packet `skb` (tag in `slot`) reached checkpoint `cp`: (checkpoint, time) goes
/// at the end of its journey.
#[inline(always)]
pub fn record(cfg: &Config, slot: u32, skb: u64, cp: u16) {
    record_from(cfg, slot, skb, |_| Some(cp));
}

/// As [`record`], at the checkpoint `choose` names from the journey's last checkpoint (a
/// program that stands for several checkpoints); nothing when it names none.
#[inline(always)]
pub fn record_from(cfg: &Config, slot: u32, skb: u64, choose: impl FnOnce(u16) -> Option<u16>) {
    // One counting site for the three ways a visit is not appended: each inlined counter
    // update costs program size on the path of every followed packet.
    if let Some(counter) = append(cfg, slot, skb, choose) {
        bump(counter);
    }
}

/// Appends (checkpoint, time) to the journey in `slot`; `Some(counter)` says why it did not.
#[inline(always)]
fn append(
    cfg: &Config,
    slot: u32,
    skb: u64,
    choose: impl FnOnce(u16) -> Option<u16>,
) -> Option<u32> {
    // SAFETY: a value of a live array map. One skb is at one checkpoint at a time, and only
    // its own checkpoints write its journey.
    let journey = unsafe { &mut *NP_JOURNEYS.get_ptr_mut(slot)? };
    if journey.skb != skb || journey.epoch != cfg.epoch {
        // Left from an earlier window or step (its packet crossed hooks unseen): forget it.
        release(slot);
        return None;
    }
    let cp = choose(journey.last_cp)?;
    let now = now();
    if cfg.stale_ns != 0 && now.wrapping_sub(journey.last_ns) > cfg.stale_ns {
        // The skb this journey followed was freed unseen and its address reused.
        release(slot);
        return Some(COUNTER_ABANDONED);
    }
    journey.last_ns = now;
    if journey.last_cp == cp {
        return Some(COUNTER_REPEATS);
    }
    journey.last_cp = cp;
    let len = usize::from(opaque(journey.len));
    let since = now.wrapping_sub(journey.first_ns) as u32;
    // `get_mut`, not indexing: the bound must be a branch the verifier sees, never a panic.
    let (Some(slot_cp), Some(slot_at)) =
        (journey.cps.get_mut(len), journey.offsets_ns.get_mut(len))
    else {
        return Some(COUNTER_JOURNEY_LONG);
    };
    *slot_cp = cp;
    *slot_at = since;
    journey.len = len as u16 + 1;
    None
}

/// Starts the journey of `skb` at checkpoint `cp` in `slot`, unless a live journey holds the
/// slot (a stale one, whose skb was freed unseen, is taken over).
#[inline(always)]
pub fn start_journey(cfg: &Config, slot: u32, skb: u64, cp: u16) -> bool {
    let (Some(tag), Some(journey)) = (NP_TAGS.get_ptr_mut(slot), NP_JOURNEYS.get_ptr_mut(slot))
    else {
        return false;
    };
    let now = now();
    // SAFETY: values of live array maps (see `record`).
    let (tag, journey) = unsafe { (&mut *tag, &mut *journey) };
    if *tag != 0 && journey.epoch == cfg.epoch {
        if cfg.stale_ns == 0 || now.wrapping_sub(journey.last_ns) <= cfg.stale_ns {
            bump(COUNTER_SLOT_BUSY);
            return false;
        }
        bump(COUNTER_ABANDONED);
    }
    *tag = skb;
    journey.skb = skb;
    journey.first_ns = now;
    journey.last_ns = now;
    journey.epoch = cfg.epoch;
    journey.last_cp = cp;
    journey.len = 1;
    journey.cps[0] = cp;
    journey.offsets_ns[0] = 0;
    bump(COUNTER_ADMITTED);
    true
}

/// Tells benchmark flows from the rest, where a path starts (see `flows`).
pub trait Packet {
    /// Whether this packet belongs to a followed flow (and is sampled in).
    fn is_followed(&self, cfg: &Config) -> bool;
}

/// A checkpoint where paths start: a followed packet (`skb`, from [`skb_address`]) is
/// recorded there and `false` returned; `true` means it is not followed yet, and the caller
/// hands it over to admission ([`hand_over`], then a tail call).
#[inline(always)]
pub fn record_or_needs_admission(cfg: &Config, skb: u64, cp: u16) -> bool {
    match followed(skb) {
        Some(slot) => {
            record(cfg, slot, skb, cp);
            false
        }
        None => true,
    }
}

/// Leaves the packet, its checkpoint and how to read it (`ADMIT_*`) in a scratch frame of its
/// own for the admission program the caller tail-calls next. Returns the frame's level
/// (`None`: no frame free); if the tail call returns (it failed), the caller closes the frame
/// with [`close_hand_over`].
#[inline(always)]
pub fn hand_over(skb: u64, cp: u16, how: u64) -> Option<u64> {
    let scratch = scratch()?;
    let level = opaque(scratch.level);
    let frame = scratch.frames.get_mut(level as usize)?;
    publish(&mut frame.skb, skb);
    publish(&mut frame.cp, u64::from(cp));
    publish(&mut frame.how, how);
    publish(&mut scratch.level, level + 1);
    Some(level)
}

/// Closes the frame [`hand_over`] opened at `level`, when no admission program took it.
#[inline(always)]
pub fn close_hand_over(level: u64) {
    if let Some(scratch) = scratch() {
        publish(&mut scratch.level, level);
    }
}

/// What [`hand_over`] left: the skb address, the checkpoint and how to read the packet; the
/// frame is closed.
#[inline(always)]
pub fn take_hand_over() -> Option<(u64, u16, u64)> {
    let scratch = scratch()?;
    let level = opaque(scratch.level) as usize;
    let frame = *scratch.frames.get(level.checked_sub(1)?)?;
    publish(&mut scratch.level, level as u64 - 1);
    Some((frame.skb, frame.cp as u16, frame.how))
}

/// Admission: starts a journey for a packet handed over by a checkpoint if it belongs to a
/// followed flow (asked only here). Returns the journey's slot when it started.
#[inline(always)]
pub fn admit<P: Packet>(cfg: &Config, skb: u64, cp: u16, packet: &P) -> Option<u32> {
    if !packet.is_followed(cfg) {
        return None;
    }
    let slot = journey_slot(skb);
    start_journey(cfg, slot, skb, cp).then_some(slot)
}

/// Puts checkpoint `cp`, reached at `at_ns`, in front of the journey just started in `slot`
/// (one checkpoint so far, reached after `at_ns`): where the packet was before admission
/// could judge it.
#[inline(always)]
pub fn prepend(cfg: &Config, slot: u32, skb: u64, cp: u16, at_ns: u64) {
    // SAFETY: a value of a live array map, the journey this program started (see `record`).
    let Some(journey) = NP_JOURNEYS.get_ptr_mut(slot).map(|p| unsafe { &mut *p }) else {
        return;
    };
    let since = journey.first_ns.wrapping_sub(at_ns);
    let fresh = cfg.stale_ns == 0 || since <= cfg.stale_ns;
    if journey.skb != skb || journey.len != 1 || at_ns > journey.first_ns || !fresh {
        return;
    }
    journey.cps[1] = journey.cps[0];
    journey.offsets_ns[1] = since as u32;
    journey.cps[0] = cp;
    journey.offsets_ns[0] = 0;
    journey.first_ns = at_ns;
    journey.len = 2;
}

/// Both steps inline, for programs that cannot tail-call (the fentry fallback): a followed
/// packet is recorded, any other one admitted if it belongs to a followed flow.
#[inline(always)]
pub fn visit_admitting<P: Packet>(cfg: &Config, skb: u64, cp: u16, packet: &P) {
    if record_or_needs_admission(cfg, skb, cp) {
        let _ = admit(cfg, skb, cp, packet);
    }
}

// ---- the end of a journey ----

/// Ends the journey of `skb` (from [`skb_address`]) if it is followed: stamps its end (`how`,
/// one of `END_*`, the time and, for a drop, `drop_reason()`, asked only then) and hands it
/// to `log` (`false`: no room, counted as `COUNTER_LOG_FULL`), then frees its slot. Returns
/// whether a journey ended (`false`: not followed, or a journey to forget).
#[inline(always)]
pub fn end_journey(
    skb: u64,
    how: u16,
    drop_reason: impl FnOnce() -> u32,
    log: impl FnOnce(&Journey) -> bool,
) -> bool {
    let Some(slot) = followed(skb) else {
        return false;
    };
    // Logged before the slot is released: a released slot may be taken by another CPU.
    let ended = finish(slot, skb, how, drop_reason, log);
    release(slot);
    ended
}

#[inline(always)]
fn finish(
    slot: u32,
    skb: u64,
    how: u16,
    drop_reason: impl FnOnce() -> u32,
    log: impl FnOnce(&Journey) -> bool,
) -> bool {
    // Between windows the epoch changes before the next one opens: nothing to keep.
    let Some(cfg) = config() else { return false };
    // SAFETY: a value of a live array map; this skb's journey, which only its own programs
    // write (see `record`).
    let Some(journey) = NP_JOURNEYS.get_ptr_mut(slot).map(|p| unsafe { &mut *p }) else {
        return false;
    };
    if journey.skb != skb || journey.epoch != cfg.epoch {
        return false;
    }
    let now = now();
    if cfg.stale_ns != 0 && now.wrapping_sub(journey.last_ns) > cfg.stale_ns {
        bump(COUNTER_ABANDONED);
        return false;
    }
    let first = journey.cps[0];
    let entered_on_uplink =
        first != CP_NONE && (first == cfg.uplink_ingress_cp || first == cfg.uplink_backlog_cp);
    journey.direction = if entered_on_uplink {
        SEGMENT_INBOUND
    } else {
        0
    };
    journey.end_ns = now;
    journey.end = how;
    journey.drop_reason = if how == END_DROPPED { drop_reason() } else { 0 };
    if !log(journey) {
        bump(COUNTER_LOG_FULL);
    }
    true
}

/// Adds one to event counter `counter` (a `COUNTER_*`).
#[inline(always)]
pub fn bump(counter: u32) {
    if let Some(slot) = NP_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: this CPU's value of a per-CPU array; programs on one CPU do not preempt each
        // other in the middle of this update.
        unsafe { *slot = (*slot).wrapping_add(1) };
    }
}

// ---- reading kernel memory ----

/// `bpf_probe_read_kernel` of a `T` at kernel address `addr` (no panics, no calls).
#[inline(always)]
pub fn probe_read<T: Copy>(addr: u64) -> Option<T> {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `value` and never faults: a
    // bad address makes it return an error (and zero the destination).
    let ret = unsafe {
        bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const core::ffi::c_void,
        )
    };
    if ret == 0 {
        // SAFETY: the helper filled all of `value`; `T` is plain data.
        Some(unsafe { value.assume_init() })
    } else {
        None
    }
}

/// [`probe_read`] counting failures in `COUNTER_READ_ERRORS`.
#[inline(always)]
pub fn probe_read_counted<T: Copy>(addr: u64) -> Option<T> {
    let value = probe_read(addr);
    if value.is_none() {
        bump(COUNTER_READ_ERRORS);
    }
    value
}
