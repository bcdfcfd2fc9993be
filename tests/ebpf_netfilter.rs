//! The netfilter loader end to end: load `nf_count` (BPF_PROG_TYPE_NETFILTER, which aya 0.14
//! cannot load) with netprof's own loader, attach it to IPv4 hooks inside a namespace, count
//! real pings exactly, and check that dropping the links detaches and frees everything.
//!
//! Needs root, kernel BTF, kernel >= 6.4, iproute2, iputils-ping and bpftool; otherwise every
//! test prints the skip marker `NETPROF-SKIP <test>: <reason> (kernel X)` and returns. Run serially (shared kernel state):
//! `cargo test -p netprof-tests --test ebpf_netfilter -- --test-threads=1 --nocapture`

use anyhow::{Context, Result};
use netprof::ebpf::{
    netfilter::{Hook, NetfilterLoader, NetfilterProgram, NFPROTO_IPV4},
    test_objects::NF_TEST_OBJECT,
};
use netprof_tests::{ping, program_unloaded, run, skip_netfilter_test, VethLab};
use profiler_common::netfilter::{MAP_NAME, PROG_COUNT, SLOT_PACKETS};
const TOOLS: &[&str] = &["ip", "ping", "bpftool", "sysctl"];
const PINGS: u32 = 20;

/// Netfilter links bpftool lists, as `(link id, prog id)`. bpftool 7.1 predates netfilter
/// links: it prints their type as the number 10 (`BPF_LINK_TYPE_NETFILTER`) and no hook or
/// priority; newer versions print `"netfilter"`.
fn bpftool_netfilter_links() -> Result<Vec<(u64, u64)>> {
    let json = run(std::process::Command::new("bpftool").args(["-j", "link", "list"]))?;
    let value: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("bpftool output: {json}"))?;
    Ok(value
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["type"] == "netfilter" || l["type"] == 10)
        .map(|l| {
            (
                l["id"].as_u64().expect("bpftool lists a link id"),
                l["prog_id"]
                    .as_u64()
                    .expect("bpftool lists a link's program id"),
            )
        })
        .collect())
}

/// Loads the counter from the tests' netfilter object, with a count map of its own.
fn load_counter() -> Result<NetfilterProgram> {
    Ok(NetfilterLoader::new(NF_TEST_OBJECT).load(PROG_COUNT)?)
}

fn packets(program: &NetfilterProgram) -> Result<u64> {
    Ok(program.read_percpu_u64(MAP_NAME, SLOT_PACKETS)?)
}

#[test]
fn counts_pings_at_two_hooks_and_detaches_on_drop() -> Result<()> {
    const TEST: &str = "counts_pings_at_two_hooks_and_detaches_on_drop";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    let lab = VethLab::create_quiet()?;
    // Two loads of the same program: each gets its own count map.
    let out = load_counter()?;
    let pre = load_counter()?;
    let out_link = out.attach_in(Some(lab.a.name()), Hook::LocalOut, -199)?;
    let pre_link = pre.attach_in(Some(lab.a.name()), Hook::PreRouting, -201)?;
    println!(
        "attached in {}: prog {} via link {} at {:?} {}, prog {} via link {} at {:?} {}",
        lab.a.name(),
        out.id(),
        out_link.id(),
        out_link.hook(),
        out_link.priority(),
        pre.id(),
        pre_link.id(),
        pre_link.hook(),
        pre_link.priority()
    );
    // The kernel's view of the links: family, hook and priority as requested.
    for (link, program) in [(&out_link, &out), (&pre_link, &pre)] {
        let info = link.query()?;
        println!("kernel link info: {info:?}");
        assert_eq!(info.program_id, program.id());
        assert_eq!(info.link_id, link.id());
        assert_eq!(info.pf, NFPROTO_IPV4);
        assert_eq!(info.hooknum, link.hook() as u32);
        assert_eq!(info.priority, link.priority());
    }

    // Positive control: bpftool sees both links, with our programs, hooks and priorities.
    let links = bpftool_netfilter_links()?;
    println!("while attached: bpftool netfilter links (id, prog): {links:?}");
    for (link, program) in [(&out_link, &out), (&pre_link, &pre)] {
        let expected = (u64::from(link.id()), u64::from(program.id()));
        assert!(links.contains(&expected), "{expected:?} not in {links:?}");
    }

    assert_eq!(packets(&out)?, 0, "namespace not quiet before the pings");
    assert_eq!(packets(&pre)?, 0, "namespace not quiet before the pings");
    let summary = ping(&lab.a, VethLab::ADDR_B, PINGS)?;
    println!("ping: {summary}");
    let (sent, received) = (packets(&out)?, packets(&pre)?);
    println!("nf_count: LOCAL_OUT (-199) = {sent}, PRE_ROUTING (-201) = {received}");
    // Echo requests leave a through LOCAL_OUT, replies enter it through PRE_ROUTING; ARP is
    // not IPv4 netfilter traffic.
    assert_eq!(sent, u64::from(PINGS));
    assert_eq!(received, u64::from(PINGS));

    // The link, not the program fd, keeps the program attached: drop the links first.
    let (out_id, pre_id) = (out.id(), pre.id());
    let link_ids = [u64::from(out_link.id()), u64::from(pre_link.id())];
    drop(out_link);
    pre_link.detach();
    let links = bpftool_netfilter_links()?;
    println!("after dropping the links: bpftool netfilter links: {links:?}");
    assert!(
        !links.iter().any(|l| link_ids.contains(&l.0)
            || l.1 == u64::from(out_id)
            || l.1 == u64::from(pre_id)),
        "{links:?}"
    );
    // Detached: more pings are not counted.
    ping(&lab.a, VethLab::ADDR_B, 3)?;
    assert_eq!(packets(&out)?, u64::from(PINGS), "counted after detach");
    assert_eq!(packets(&pre)?, u64::from(PINGS), "counted after detach");

    drop(out);
    drop(pre);
    for id in [out_id, pre_id] {
        assert!(program_unloaded(id)?, "program {id} still loaded");
    }
    println!("after dropping the programs: programs {out_id} and {pre_id} unloaded");
    Ok(())
}

#[test]
fn shared_map_counts_both_programs_and_links_follow_the_namespace() -> Result<()> {
    const TEST: &str = "shared_map_counts_both_programs_and_links_follow_the_namespace";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    let lab = VethLab::create_quiet()?;
    let first = load_counter()?;
    // A second load sharing the first one's map (as a program loaded next to aya maps would).
    let second = NetfilterLoader::new(NF_TEST_OBJECT)
        .reuse_map(
            MAP_NAME,
            first.map_fd(MAP_NAME).expect("nf_count uses NF_COUNTS"),
        )
        .load(PROG_COUNT)?;
    // Both on a's LOCAL_OUT (around DNAT), and the first once more on b's LOCAL_IN: the link
    // lives in the namespace it was created in.
    let links = [
        first.attach_in(Some(lab.a.name()), Hook::LocalOut, -101)?,
        second.attach_in(Some(lab.a.name()), Hook::LocalOut, -99)?,
        first.attach_in(Some(lab.b.name()), Hook::LocalIn, -99)?,
    ];
    ping(&lab.a, VethLab::ADDR_B, PINGS)?;
    let (a, b) = (packets(&first)?, packets(&second)?);
    println!("shared NF_COUNTS: read via first = {a}, via second = {b}");
    // 20 requests seen twice on a's LOCAL_OUT, and once on b's LOCAL_IN.
    assert_eq!(a, 3 * u64::from(PINGS));
    assert_eq!(b, a, "both programs read the same map");

    drop(links);
    ping(&lab.a, VethLab::ADDR_B, 3)?;
    assert_eq!(
        packets(&first)?,
        3 * u64::from(PINGS),
        "counted after detach"
    );
    Ok(())
}

#[test]
fn extreme_priorities_are_refused() -> Result<()> {
    const TEST: &str = "extreme_priorities_are_refused";
    if skip_netfilter_test(TEST, TOOLS) {
        return Ok(());
    }
    let lab = VethLab::create_quiet()?;
    let program = load_counter()?;
    for priority in [i32::MIN, i32::MAX] {
        let err = program
            .attach_in(Some(lab.a.name()), Hook::LocalOut, priority)
            .unwrap_err();
        println!("priority {priority}: {err}");
        assert!(err
            .to_string()
            .contains("priority must be between INT_MIN+1 and INT_MAX-1"));
    }
    // The extremes that are allowed do attach.
    for priority in [i32::MIN + 1, i32::MAX - 1] {
        program.attach_in(Some(lab.a.name()), Hook::LocalOut, priority)?;
    }
    Ok(())
}
