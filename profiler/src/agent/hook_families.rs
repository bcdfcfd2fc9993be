//! Which checkpoint families an agent attaches (`--hooks`).

/// The checkpoint families: tc on every watched device (node and pod side), tp_btf device
/// rx/tx, netfilter points, the skb free / retransmit tracepoints, and the veths' receive
/// backlog (`netif_rx`).
///
/// The default leaves `dev` out. Its two tp_btf programs fire for every packet on every device
/// of the kernel (in the lab, both nodes' agents run for each packet) and, on a watched device,
/// sit next to the tc hooks (`netif_receive_skb` just before tc ingress, `net_dev_start_xmit`
/// just after tc egress on a noqueue veth), so they add cost but no stage: measured on
/// flannel-vxlan they were 1.6 M of 4.5 M program runs per node. `all` or `dev` brings them back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookFamilies {
    pub tc: bool,
    pub dev: bool,
    pub netfilter: bool,
    pub tracepoints: bool,
    /// tp_btf `netif_rx`: the wait of a veth's frame for the receive softirq, its own stage.
    pub backlog: bool,
    /// Netfilter through fentry/fexit on conntrack and the table walkers instead of netfilter
    /// links (the fallback for kernels before 6.4, used there without asking).
    pub nf_fentry: bool,
    /// The gauge (`CP_NF_GAUGE`): one more netfilter program on FORWARD, right after a point,
    /// whose segment is netprof's own; the report then takes netfilter runs out of each step's
    /// segments at what the gauge measured in that step. On by default: one more run for every
    /// forwarded packet, below what the overhead runs resolve (nginx QPS 0.747x paired with
    /// it and without it), and the ground-truth checks of the same data came out 6 of 8
    /// within with it against 4 of 8 with the calibration's per-run costs.
    pub gauge: bool,
}

impl Default for HookFamilies {
    fn default() -> Self {
        Self {
            tc: true,
            dev: false,
            netfilter: true,
            tracepoints: true,
            backlog: true,
            nf_fentry: false,
            gauge: true,
        }
    }
}

impl HookFamilies {
    /// Every family, tp_btf device hooks included.
    pub const ALL: Self = Self {
        tc: true,
        dev: true,
        netfilter: true,
        tracepoints: true,
        backlog: true,
        nf_fentry: false,
        gauge: true,
    };
}

impl std::str::FromStr for HookFamilies {
    type Err = String;

    /// `default` (tc,nf,trace,backlog,gauge), `all`, or a comma-separated subset of
    /// `default,tc,dev,nf,trace,backlog,gauge`, where
    /// `nf-fentry` in place of `nf` takes netfilter through fentry/fexit instead of links, and
    /// `gauge` needs `nf`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "default" => return Ok(Self::default()),
            "all" => return Ok(Self::ALL),
            _ => {}
        }
        let mut set = Self {
            tc: false,
            dev: false,
            netfilter: false,
            tracepoints: false,
            backlog: false,
            nf_fentry: false,
            gauge: false,
        };
        for word in text.split(',').map(str::trim) {
            match word {
                "default" => {
                    let d = Self::default();
                    (set.tc, set.netfilter, set.tracepoints, set.backlog, set.gauge) =
                        (d.tc, d.netfilter, d.tracepoints, d.backlog, d.gauge);
                }
                "tc" => set.tc = true,
                "dev" => set.dev = true,
                "nf" => set.netfilter = true,
                "trace" => set.tracepoints = true,
                "backlog" => set.backlog = true,
                "gauge" => set.gauge = true,
                "nf-fentry" => {
                    set.netfilter = true;
                    set.nf_fentry = true;
                }
                other => return Err(format!("unknown hook family '{other}': use default, all, or some of default,tc,dev,nf,nf-fentry,trace,backlog,gauge")),
            }
        }
        if set.gauge && (!set.netfilter || set.nf_fentry) {
            return Err(
                "the gauge is a netfilter link: 'gauge' needs 'nf' (not nf-fentry)".to_owned(),
            );
        }
        Ok(set)
    }
}

impl std::fmt::Display for HookFamilies {
    /// The families as `--hooks` takes them (`tc,nf,trace,backlog,gauge`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let netfilter = if self.nf_fentry { "nf-fentry" } else { "nf" };
        let words: Vec<&str> = [
            (self.tc, "tc"),
            (self.dev, "dev"),
            (self.netfilter, netfilter),
            (self.tracepoints, "trace"),
            (self.backlog, "backlog"),
            (self.gauge, "gauge"),
        ]
        .into_iter()
        .filter_map(|(on, word)| on.then_some(word))
        .collect();
        f.write_str(&words.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_print_as_hooks_takes_them() {
        for text in [
            "tc,nf,trace,backlog",
            "nf",
            "tc,backlog",
            "nf-fentry,trace",
            "tc,dev,nf,trace,backlog",
            "tc,nf,trace,backlog,gauge",
        ] {
            let families: HookFamilies = text.parse().unwrap();
            assert_eq!(families.to_string(), text);
        }
        assert_eq!(
            HookFamilies::default().to_string(),
            "tc,nf,trace,backlog,gauge"
        );
        assert!("nf,udp"
            .parse::<HookFamilies>()
            .unwrap_err()
            .contains("udp"));
        assert_eq!(
            HookFamilies::ALL.to_string(),
            "tc,dev,nf,trace,backlog,gauge"
        );
        assert_eq!(
            "default,dev".parse::<HookFamilies>().unwrap().to_string(),
            "tc,dev,nf,trace,backlog,gauge"
        );
        for lone in ["gauge", "tc,gauge", "nf-fentry,gauge"] {
            let err = lone.parse::<HookFamilies>().unwrap_err();
            assert!(err.contains("needs 'nf'"), "{lone}: {err}");
        }
    }
}
