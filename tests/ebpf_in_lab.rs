//! The uplink counter inside the real lab: on node 1's `eno1` in `flannel-hostgw`, a pod-to-pod
//! ping run crosses the uplink as plain ICMP, so the counter must see exactly N requests out and
//! N replies in; in `flannel-vxlan` the same run is encapsulated, so it must see no echo at all.

use netprof::ebpf::UplinkCounter;
use netprof::lab::{self, LabNames, LabSpec, Mode, Node};
use netprof_tests::{ebpf_skip_reason, print_skip, unique_lab_name, LabCleanup as Cleanup};

const PINGS: u32 = 40;

fn ping_pods_and_count(mode: Mode) -> Option<netprof::ebpf::IcmpCounts> {
    if let Some(reason) = ebpf_skip_reason(&["ip", "ping"]) {
        print_skip(&format!("ebpf_in_lab {mode}"), &reason);
        return None;
    }
    let names = LabNames::new(&unique_lab_name()).unwrap();
    let _cleanup = Cleanup(names.clone());
    let built = lab::up(&names, LabSpec { mode, services: 0 }).unwrap();
    let pod = built.pod_path().unwrap();
    let counter = UplinkCounter::attach(Some(&names.node(Node::One)), "eno1").unwrap();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &pod.client_netns,
            "ping",
            "-c",
            &PINGS.to_string(),
            "-i",
            "0.01",
            "-W",
            "1",
        ])
        .arg(pod.server_ip.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ping failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let counts = counter.counts().unwrap();
    counter.detach().unwrap();
    println!("{mode}: {}", serde_json::to_string(&counts).unwrap());
    Some(counts)
}

#[test]
fn hostgw_pod_pings_cross_the_uplink_as_icmp() {
    let Some(counts) = ping_pods_and_count(Mode::FlannelHostgw) else {
        return;
    };
    assert_eq!(counts.egress_echo_requests, u64::from(PINGS));
    assert_eq!(counts.ingress_echo_replies, u64::from(PINGS));
    assert_eq!(counts.ingress_echo_requests + counts.egress_echo_replies, 0);
}

#[test]
fn vxlan_pod_pings_cross_the_uplink_encapsulated() {
    let Some(counts) = ping_pods_and_count(Mode::FlannelVxlan) else {
        return;
    };
    // Every echo is inside a VXLAN/UDP packet on eno1: no bare ICMP echo, and at least one
    // encapsulated packet per echo and per reply.
    assert_eq!(counts.egress_echo_requests + counts.ingress_echo_replies, 0);
    assert!(counts.egress_other_ipv4 >= u64::from(PINGS), "{counts:?}");
    assert!(counts.ingress_other_ipv4 >= u64::from(PINGS), "{counts:?}");
}
