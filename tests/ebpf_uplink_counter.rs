//! The uplink counter end to end: build (aya-build in netprof's build.rs), load, attach on a
//! veth inside a namespace, count real pings exactly, detach without leftovers.
//!
//! Needs root, kernel BTF, iproute2, iputils-ping and bpftool; otherwise every test prints
//! `NETPROF-SKIP <test>: <reason> (kernel X)` and returns. Run serially (shared kernel state):
//! `cargo test -p netprof-tests --test ebpf_uplink_counter -- --test-threads=1 --nocapture`

use std::net::UdpSocket;

use anyhow::Result;
use netprof::{
    ebpf::{AttachMode, Attachment, EbpfError, IcmpCounts, UplinkCounter},
    netns,
};
use netprof_tests::{
    ebpf_skip_reason, has_clsact, kernel_version, ping, print_skip, program_unloaded,
    tc_hook_programs, AttachedProgram, VethLab,
};

const TOOLS: &[&str] = &["ip", "tc", "ping", "bpftool"];
const IFACE: &str = VethLab::IFACE;

/// Returns `true` (after printing why) when the test cannot run here.
fn skip(test: &str) -> bool {
    match ebpf_skip_reason(TOOLS) {
        Some(reason) => {
            print_skip(test, &reason);
            true
        }
        None => false,
    }
}

fn print_counts(label: &str, counts: &IcmpCounts) {
    println!("{label}: {}", serde_json::to_string(counts).unwrap());
    println!(
        "{label}: egress_echo_requests={} ingress_echo_replies={} ingress_echo_requests={} \
         egress_echo_replies={}",
        counts.egress_echo_requests,
        counts.ingress_echo_replies,
        counts.ingress_echo_requests,
        counts.egress_echo_replies
    );
}

/// Sends `n` UDP datagrams from namespace `ns` to a closed port on `dest`: other IPv4 out, and
/// ICMP port-unreachable (other IPv4 as well, not echo) back.
fn send_udp(ns: &str, dest: &str, n: usize) -> Result<()> {
    netns::run_in(ns, || -> Result<()> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..n {
            socket.send_to(b"netprof", (dest, 9))?;
        }
        Ok(())
    })?
}

/// The counter's two programs on `eno1` in `a`, asserting both are there.
fn attached_counter_programs(lab: &VethLab) -> Result<Vec<AttachedProgram>> {
    let programs = tc_hook_programs(&lab.a, IFACE)?;
    println!("while attached: tc hooks of {IFACE}: {programs:?}");
    for name in ["count_ingress", "count_egress"] {
        assert!(
            programs.iter().any(|p| p.name == name),
            "{name} not attached: {programs:?}"
        );
    }
    Ok(programs)
}

/// Asserts that nothing is left on the interface's tc hooks (TCX links, cls_bpf filters).
fn assert_nothing_attached(lab: &VethLab) -> Result<()> {
    let programs = tc_hook_programs(&lab.a, IFACE)?;
    println!("after detach: tc hooks of {IFACE}: {programs:?}");
    assert!(
        programs.is_empty(),
        "programs left on {IFACE}: {programs:?}"
    );
    let filters = lab.a.tc(&["filter", "show", "dev", IFACE, "ingress"])?
        + &lab.a.tc(&["filter", "show", "dev", IFACE, "egress"])?;
    assert!(
        filters.trim().is_empty(),
        "tc filters left on {IFACE}: {filters}"
    );
    Ok(())
}

/// Asserts that the kernel freed the programs (no link, filter or fd holds them any more).
fn assert_unloaded(programs: &[AttachedProgram]) -> Result<()> {
    for program in programs {
        assert!(
            program_unloaded(program.id)?,
            "program still loaded: {program:?}"
        );
    }
    println!(
        "after detach: programs {:?} unloaded",
        programs.iter().map(|p| p.id).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn counts_pings_exactly_and_detaches_cleanly() -> Result<()> {
    const TEST: &str = "counts_pings_exactly_and_detaches_cleanly";
    if skip(TEST) {
        return Ok(());
    }
    let lab = VethLab::create()?;
    let counter = UplinkCounter::attach(Some(lab.a.name()), IFACE)?;
    println!(
        "attached to {IFACE} in {} via {:?}",
        lab.a.name(),
        counter.attachment()
    );
    if kernel_version().is_some_and(|v| v >= (6, 6)) {
        assert_eq!(
            counter.attachment(),
            Attachment::Tcx,
            "kernels >= 6.6 have TCX"
        );
    }

    // Positive control: the checks after drop can see our programs.
    let attached = attached_counter_programs(&lab)?;

    let summary = ping(&lab.a, VethLab::ADDR_B, 25)?;
    println!("ping: {summary}");
    send_udp(lab.a.name(), VethLab::ADDR_B, 3)?;
    // The port-unreachable replies are sent by B's receive path and may still be crossing
    // the veth when send_udp returns: poll (milliseconds) until one is counted.
    let counts = netprof_tests::leftovers::poll(
        std::time::Duration::from_secs(5),
        || Ok(counter.counts()?),
        |c| c.ingress_other_ipv4 >= 1,
    )?;
    print_counts("uplink counts", &counts);
    assert_eq!(counts.egress_echo_requests, 25, "{counts:?}");
    assert_eq!(counts.ingress_echo_replies, 25, "{counts:?}");
    assert_eq!(counts.ingress_echo_requests, 0, "{counts:?}");
    assert_eq!(counts.egress_echo_replies, 0, "{counts:?}");
    // The filter separates the rest: our UDP out and B's port-unreachables back are other
    // IPv4; ARP (and IPv6 neighbour discovery) is non-IPv4.
    assert!(counts.egress_other_ipv4 >= 3, "{counts:?}");
    assert!(counts.ingress_other_ipv4 >= 1, "{counts:?}");
    assert!(
        counts.egress_non_ipv4 >= 1,
        "ARP request expected: {counts:?}"
    );
    assert!(
        counts.ingress_non_ipv4 >= 1,
        "ARP reply expected: {counts:?}"
    );

    drop(counter);
    assert_nothing_attached(&lab)?;
    assert_unloaded(&attached)?;
    let clsact = has_clsact(&lab.a, IFACE)?;
    println!("after drop: clsact qdisc on {IFACE}: {clsact}");
    assert!(!clsact, "TCX attach must not leave a clsact qdisc");
    Ok(())
}

#[test]
fn netlink_fallback_removes_the_clsact_it_added() -> Result<()> {
    const TEST: &str = "netlink_fallback_removes_the_clsact_it_added";
    if skip(TEST) {
        return Ok(());
    }
    let lab = VethLab::create()?;
    let counter = UplinkCounter::attach_with(Some(lab.a.name()), IFACE, AttachMode::Netlink)?;
    assert_eq!(
        counter.attachment(),
        Attachment::Netlink {
            created_clsact: true
        }
    );
    assert!(has_clsact(&lab.a, IFACE)?);
    let filters = lab.a.tc(&["filter", "show", "dev", IFACE, "ingress"])?;
    assert!(filters.contains("count_ingress"), "{filters}");
    let attached = attached_counter_programs(&lab)?;
    assert!(
        attached.iter().all(|p| p.kind.starts_with("clsact/")),
        "{attached:?}"
    );

    println!("ping: {}", ping(&lab.a, VethLab::ADDR_B, 10)?);
    let counts = counter.counts()?;
    print_counts("uplink counts (netlink)", &counts);
    assert_eq!(counts.egress_echo_requests, 10, "{counts:?}");
    assert_eq!(counts.ingress_echo_replies, 10, "{counts:?}");
    assert_eq!(counts.ingress_echo_requests, 0, "{counts:?}");

    counter.detach()?;
    assert_nothing_attached(&lab)?;
    assert!(
        !has_clsact(&lab.a, IFACE)?,
        "the clsact qdisc netprof added must go"
    );
    Ok(())
}

#[test]
fn netlink_fallback_keeps_a_clsact_that_is_not_only_ours() -> Result<()> {
    const TEST: &str = "netlink_fallback_keeps_a_clsact_that_is_not_only_ours";
    if skip(TEST) {
        return Ok(());
    }
    // Someone else's qdisc: netprof must leave it.
    let lab = VethLab::create()?;
    lab.a.tc(&["qdisc", "add", "dev", IFACE, "clsact"])?;
    let counter = UplinkCounter::attach_with(Some(lab.a.name()), IFACE, AttachMode::Netlink)?;
    assert_eq!(
        counter.attachment(),
        Attachment::Netlink {
            created_clsact: false
        }
    );
    counter.detach()?;
    assert_nothing_attached(&lab)?;
    assert!(
        has_clsact(&lab.a, IFACE)?,
        "a clsact qdisc netprof did not add must stay"
    );

    // netprof's qdisc, but another tool's filters arrive on it: they must survive.
    let lab = VethLab::create()?;
    let ours = UplinkCounter::attach_with(Some(lab.a.name()), IFACE, AttachMode::Netlink)?;
    let theirs = UplinkCounter::attach_with(Some(lab.a.name()), IFACE, AttachMode::Netlink)?;
    assert_eq!(
        ours.attachment(),
        Attachment::Netlink {
            created_clsact: true
        }
    );
    assert_eq!(
        theirs.attachment(),
        Attachment::Netlink {
            created_clsact: false
        }
    );
    ours.detach()?;
    assert!(
        has_clsact(&lab.a, IFACE)?,
        "qdisc still carries another tool's filters"
    );
    println!("ping: {}", ping(&lab.a, VethLab::ADDR_B, 5)?);
    let counts = theirs.counts()?;
    assert_eq!(
        counts.egress_echo_requests, 5,
        "the other filters still run: {counts:?}"
    );
    theirs.detach()?;
    assert_nothing_attached(&lab)?;
    Ok(())
}

#[test]
fn missing_interface_names_the_namespace() -> Result<()> {
    const TEST: &str = "missing_interface_names_the_namespace";
    if skip(TEST) {
        return Ok(());
    }
    let lab = VethLab::create()?;
    let err = UplinkCounter::attach(Some(lab.a.name()), "nope0").unwrap_err();
    println!("error: {err}");
    assert!(
        matches!(err, EbpfError::InterfaceNotFound { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&format!(
        "interface nope0 not found in netns {}",
        lab.a.name()
    )));

    let err = UplinkCounter::attach(Some("netprof-t-no-such-netns"), IFACE).unwrap_err();
    println!("error: {err}");
    assert!(
        matches!(err, EbpfError::Netns(netns::NetnsError::NotFound { .. })),
        "{err:?}"
    );
    Ok(())
}
