//! Which netfilter points to attach on each hook: only those that bracket a hook function the
//! namespace really has. Every attached point is one more program on every packet of that hook,
//! and most of the 7 brackets per hook are empty (no raw or mangle table under kube-proxy), so
//! attaching all 35 would cost about as much as the rest of the agent together.
//!
//! A kernel can list its registered hook functions only with CONFIG_NETFILTER_NETLINK_HOOK
//! (`nft list hooks`), which many lack, so they are derived from the tables
//! present: each iptables table registers fixed priorities on fixed hooks, and conntrack is
//! assumed wherever any table exists (kube-proxy's rules need it).

use std::collections::BTreeSet;

use profiler_common::datapath::{
    NfNextPoint, NF_GAUGE_AFTER, NF_GAUGE_HOOK, NF_HOOK_COUNT, NF_HOOK_FORWARD, NF_HOOK_LOCAL_IN,
    NF_HOOK_LOCAL_OUT, NF_HOOK_POST_ROUTING, NF_HOOK_PRE_ROUTING, NF_NEXT_GAUGE, NF_POINT_COUNT,
    NF_POINT_PRIORITIES, NF_RESUME_AFTER_GAUGE,
};

const PRE: u32 = NF_HOOK_PRE_ROUTING;
const IN: u32 = NF_HOOK_LOCAL_IN;
const FWD: u32 = NF_HOOK_FORWARD;
const OUT: u32 = NF_HOOK_LOCAL_OUT;
const POST: u32 = NF_HOOK_POST_ROUTING;

/// Hooks and priority of each standard iptables table (`include/uapi/linux/netfilter_ipv4.h`).
fn table_hooks(table: &str) -> Option<(&'static [u32], i32)> {
    Some(match table {
        "raw" => (&[PRE, OUT], -300),
        "mangle" => (&[PRE, IN, FWD, OUT, POST], -150),
        "nat" => return None, // two priorities; handled in `registered`
        "filter" => (&[IN, FWD, OUT], 0),
        "security" => (&[IN, FWD, OUT], 50),
        _ => return None,
    })
}

/// The registered hook priorities per hook for these tables (names as `netfilter_tables`
/// gives them, e.g. `ip nat`), or `None` when a table is not a standard iptables one (a native
/// nftables table may hook anywhere: then every point is attached).
pub fn registered(tables: &[String]) -> Option<[Vec<i32>; NF_HOOK_COUNT as usize]> {
    let mut hooks: [Vec<i32>; NF_HOOK_COUNT as usize] = Default::default();
    for table in tables {
        let name = table.strip_prefix("ip ")?;
        if name == "nat" {
            hooks[PRE as usize].push(-100);
            hooks[OUT as usize].push(-100);
            hooks[IN as usize].push(100);
            hooks[POST as usize].push(100);
            continue;
        }
        let (on, priority) = table_hooks(name)?;
        for &hook in on {
            hooks[hook as usize].push(priority);
        }
    }
    if !tables.is_empty() {
        // Conntrack on the way in and out, confirm at the end. (Defrag at -400 is left to the
        // device -> first point segment: it only works on fragments.)
        for hook in [PRE, OUT] {
            hooks[hook as usize].push(-200);
        }
        for hook in [IN, POST] {
            hooks[hook as usize].push(i32::MAX);
        }
    }
    Some(hooks)
}

/// The point indexes to attach on a hook with these registered priorities: every hook
/// function sits between two consecutive attached points, and no two consecutive attached
/// points hold nothing between them. A point is kept when the interval on either side of it
/// holds a hook function; then of two kept points with nothing between them (an empty bracket
/// such as mangle's under kube-proxy) only the first stays, so each packet pays one program
/// there instead of two and the bracket's glue goes into the next table's segment.
pub fn points(registered: &[i32]) -> Vec<u32> {
    let bound = |k: i64| -> i64 {
        if k < 0 {
            i64::MIN
        } else if k >= i64::from(NF_POINT_COUNT) {
            i64::MAX
        } else {
            i64::from(NF_POINT_PRIORITIES[k as usize])
        }
    };
    let occupied = |lo: i64, hi: i64| {
        registered
            .iter()
            .any(|&p| i64::from(p) > lo && i64::from(p) < hi)
    };
    let bracketing = (0..NF_POINT_COUNT).filter(|&k| {
        let k = i64::from(k);
        occupied(bound(k - 1), bound(k)) || occupied(bound(k), bound(k + 1))
    });
    let mut kept: Vec<u32> = Vec::new();
    for point in bracketing {
        if let Some(&last) = kept.last() {
            if !occupied(bound(i64::from(last)), bound(i64::from(point))) {
                continue;
            }
        }
        kept.push(point);
    }
    kept
}

/// `Config::nf_next_point` for the linked `(hook, point)`s and, with `gauge`, the gauge after
/// FORWARD's point `NF_GAUGE_AFTER`: from each resume index, the first linked point at or after
/// it, else the hook's first (the hook is crossed again).
pub fn next_point_table(linked: &BTreeSet<(u32, u32)>, gauge: bool) -> NfNextPoint {
    let mut table = NfNextPoint::default();
    for (hook, row) in table.iter_mut().enumerate() {
        let on_hook: Vec<u32> = linked
            .iter()
            .filter(|(h, _)| *h as usize == hook)
            .map(|&(_, point)| point)
            .collect();
        let Some(&first) = on_hook.first() else {
            continue;
        };
        let from = |index: usize| {
            let point = on_hook
                .iter()
                .copied()
                .find(|&p| p as usize >= index)
                .unwrap_or(first);
            point as u8 + 1
        };
        for (index, next) in row.iter_mut().enumerate() {
            *next = from(index);
        }
        let gauged = gauge && hook as u32 == NF_GAUGE_HOOK && on_hook.contains(&NF_GAUGE_AFTER);
        if gauged {
            let after_point = NF_GAUGE_AFTER as usize + 1;
            row[after_point] = NF_NEXT_GAUGE;
            row[NF_RESUME_AFTER_GAUGE] = from(after_point);
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use profiler_common::datapath::{nf_checkpoint, nf_next_checkpoint, CP_NF_GAUGE, CP_NONE};

    use super::*;

    fn tables(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| format!("ip {n}")).collect()
    }

    #[test]
    fn kube_proxy_tables_need_fourteen_points_not_thirty_five() {
        let hooks = registered(&tables(&["nat", "filter"])).unwrap();
        let per_hook: Vec<Vec<u32>> = hooks.iter().map(|h| points(h)).collect();
        // PRE: conntrack bracketed by -201/-199, nat by -199/-99 (the empty mangle bracket
        // -199/-101 needs no point of its own).
        assert_eq!(per_hook[PRE as usize], vec![1, 2, 4]);
        assert_eq!(per_hook[IN as usize], vec![4, 5, 6]);
        assert_eq!(per_hook[FWD as usize], vec![4, 5]);
        assert_eq!(per_hook[OUT as usize], vec![1, 2, 4, 5]);
        assert_eq!(per_hook[POST as usize], vec![5, 6]);
        assert_eq!(per_hook.iter().map(Vec::len).sum::<usize>(), 14);
    }

    #[test]
    fn merged_points_join_only_empty_brackets() {
        let hooks = registered(&tables(&["raw", "mangle", "nat", "filter", "security"])).unwrap();
        for (hook, prios) in hooks.iter().enumerate() {
            let kept: Vec<i32> = points(prios)
                .iter()
                .map(|&k| NF_POINT_PRIORITIES[k as usize])
                .collect();
            for pair in kept.windows(2) {
                // The grid's own brackets inside this segment that hold a hook function: one
                // at most, so a segment's time is one bracket's (merging adds only empty ones).
                let grid: Vec<i32> = NF_POINT_PRIORITIES
                    .iter()
                    .copied()
                    .filter(|&g| g >= pair[0] && g <= pair[1])
                    .collect();
                let occupied = grid
                    .windows(2)
                    .filter(|g| prios.iter().any(|&p| p > g[0] && p < g[1]))
                    .count();
                assert_eq!(occupied, 1, "hook {hook}: {pair:?} merges {grid:?}");
            }
            // Every priority inside the attached range sits strictly between two points.
            for &p in prios {
                if p > kept[0] && p < *kept.last().unwrap() {
                    assert!(!kept.contains(&p), "hook {hook}: a point on {p}");
                }
            }
        }
    }

    #[test]
    fn consecutive_points_always_hold_a_hook_function() {
        for names in [
            &["nat", "filter"][..],
            &["filter"],
            &["raw", "nat", "filter"],
            &["mangle", "filter"],
            &["raw", "mangle", "nat", "filter", "security"],
        ] {
            let hooks = registered(&tables(names)).unwrap();
            for (hook, prios) in hooks.iter().enumerate() {
                let kept = points(prios);
                for pair in kept.windows(2) {
                    let (lo, hi) = (
                        NF_POINT_PRIORITIES[pair[0] as usize],
                        NF_POINT_PRIORITIES[pair[1] as usize],
                    );
                    assert!(
                        prios.iter().any(|&p| p > lo && p < hi),
                        "{names:?} hook {hook}: nothing between {lo} and {hi}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_tables_no_points_and_foreign_tables_mean_all() {
        let hooks = registered(&[]).unwrap();
        assert!(hooks.iter().all(|h| points(h).is_empty()));
        assert!(registered(&["inet cilium".to_owned()]).is_none());
    }
    /// The checkpoints a followed packet is recorded at when it crosses `hook` once, coming
    /// from `last`, as the shared program chooses them (the gauge where it is linked).
    fn walk(table: &NfNextPoint, hook: u32, mut last: u16, runs: usize) -> Vec<u16> {
        let mut seen = Vec::new();
        for _ in 0..runs {
            let cp = nf_next_checkpoint(table, hook, last).expect("a point");
            seen.push(cp);
            last = cp;
        }
        seen
    }

    #[test]
    fn the_shared_program_records_each_linked_point_in_order() {
        let hooks = registered(&tables(&["nat", "filter"])).unwrap();
        let linked: BTreeSet<(u32, u32)> = hooks
            .iter()
            .enumerate()
            .flat_map(|(hook, prios)| points(prios).into_iter().map(move |p| (hook as u32, p)))
            .collect();
        for gauge in [false, true] {
            let table = next_point_table(&linked, gauge);
            for hook in 0..NF_HOOK_COUNT {
                let mut expected: Vec<u16> = Vec::new();
                for &(h, p) in linked.iter().filter(|(h, _)| *h == hook) {
                    expected.push(nf_checkpoint(h, p));
                    if gauge && (h, p) == (NF_GAUGE_HOOK, NF_GAUGE_AFTER) {
                        expected.push(CP_NF_GAUGE);
                    }
                }
                // Entering from a device, from another hook's point, from the gauge (on
                // another hook), or from this hook's last point (the hook crossed again):
                // the hook's points in order, the gauge after the point it follows.
                let last_of_other = nf_checkpoint((hook + 1) % NF_HOOK_COUNT, 1);
                let starts = [CP_NONE, 70, last_of_other, *expected.last().unwrap()];
                for from in starts {
                    assert_eq!(
                        walk(&table, hook, from, expected.len()),
                        expected,
                        "hook {hook}, gauge {gauge}, from {from}"
                    );
                }
                if hook != NF_GAUGE_HOOK {
                    assert_eq!(
                        nf_next_checkpoint(&table, hook, CP_NF_GAUGE),
                        nf_next_checkpoint(&table, hook, CP_NONE)
                    );
                }
            }
        }
        // The gauge only where its point is linked.
        let no_forward: BTreeSet<(u32, u32)> = [(NF_HOOK_FORWARD, 5)].into_iter().collect();
        let table = next_point_table(&no_forward, true);
        let walked = walk(&table, NF_HOOK_FORWARD, CP_NONE, 2);
        assert!(!walked.contains(&CP_NF_GAUGE), "{walked:?}");
    }

    #[test]
    fn a_hook_with_nothing_linked_records_nothing() {
        let linked: BTreeSet<(u32, u32)> = [(NF_HOOK_LOCAL_OUT, 2)].into_iter().collect();
        let table = next_point_table(&linked, true);
        assert_eq!(
            table[NF_HOOK_LOCAL_OUT as usize],
            [3; NF_RESUME_AFTER_GAUGE + 1]
        );
        for hook in [NF_HOOK_PRE_ROUTING, NF_HOOK_FORWARD, NF_HOOK_POST_ROUTING] {
            assert_eq!(nf_next_checkpoint(&table, hook, CP_NONE), None);
        }
        // The zeroed table user space has not written yet records nothing anywhere.
        assert_eq!(
            nf_next_checkpoint(&NfNextPoint::default(), NF_HOOK_LOCAL_OUT, CP_NONE),
            None
        );
    }
}
