//! Values no real run can produce, refused with the file and the field: negative or
//! non-finite numbers, RTTs above a minute, counts that contradict each other. A report built
//! on such a file would print numbers that look measured and are not.

use std::path::Path;

use profiler_common::datapath::{bucket_low, bucket_of};

use super::input::InputError;
use crate::agent::report::AgentReport;
use crate::bench::result::{AgentsOffPings, ModeResult, PathResult};
use crate::bench::validate::{Sample, Side, ValidateResult};
use crate::parse::{ab::AbReport, ping::PingReport};

/// No RTT, step or run of the lab lasts this long.
const MINUTE_US: f64 = 60e6;

struct Check<'a> {
    path: &'a Path,
}

impl Check<'_> {
    fn fail(&self, field: String, value: impl ToString, why: &'static str) -> InputError {
        InputError::Invalid {
            path: self.path.to_path_buf(),
            field,
            value: value.to_string(),
            why,
        }
    }

    /// A finite number at or above zero.
    fn amount(&self, field: impl Fn() -> String, value: f64) -> Result<(), InputError> {
        if !value.is_finite() {
            return Err(self.fail(field(), value, "not a finite number"));
        }
        if value < 0.0 {
            return Err(self.fail(field(), value, "cannot be negative"));
        }
        Ok(())
    }

    fn ping(&self, at: &str, ping: &PingReport) -> Result<(), InputError> {
        if ping.received > ping.transmitted {
            return Err(self.fail(
                format!("{at}.ping.received"),
                ping.received,
                "more replies than echo requests transmitted",
            ));
        }
        if ping.rtts_us.len() as u64 != ping.received {
            return Err(self.fail(
                format!("{at}.ping.rtts_us"),
                format!("{} values", ping.rtts_us.len()),
                "not one RTT per reply received",
            ));
        }
        for (i, rtt) in ping.rtts_us.iter().enumerate() {
            let field = || format!("{at}.ping.rtts_us[{i}]");
            self.amount(field, *rtt)?;
            if *rtt == 0.0 || *rtt > MINUTE_US {
                return Err(self.fail(field(), rtt, "an RTT is above 0 and below a minute"));
            }
        }
        match &ping.stats {
            None if ping.received > 0 => Err(self.fail(
                format!("{at}.ping.stats"),
                "null",
                "replies were received but have no statistics",
            )),
            None => Ok(()),
            Some(s) => {
                let ordered = [s.min_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms];
                for (name, v) in ["min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"]
                    .iter()
                    .zip(ordered)
                {
                    let field = || format!("{at}.ping.stats.{name}");
                    self.amount(field, v)?;
                    if v * 1e3 > MINUTE_US {
                        return Err(self.fail(field(), v, "an RTT is below a minute"));
                    }
                }
                // Percentiles come from a histogram 0.1% wide: allow that much disorder.
                if ordered.windows(2).any(|w| w[0] > w[1] * 1.001 + 1e-6) {
                    return Err(self.fail(
                        format!("{at}.ping.stats"),
                        format!("{ordered:?}"),
                        "min, p50, p90, p99 and max must not decrease",
                    ));
                }
                if s.count != ping.received {
                    return Err(self.fail(
                        format!("{at}.ping.stats.count"),
                        s.count,
                        "not the number of replies received",
                    ));
                }
                Ok(())
            }
        }
    }

    /// Pings with the agents detached, whose blocks pair up with the profiled `ping`'s.
    fn agents_off(
        &self,
        at: &str,
        ping: &PingReport,
        off: &AgentsOffPings,
    ) -> Result<(), InputError> {
        self.ping(&format!("{at}.ping"), &off.ping)?;
        for (field, blocks, rtts) in [
            ("block_rtts", &off.block_rtts, off.ping.rtts_us.len()),
            (
                "profiled_block_rtts",
                &off.profiled_block_rtts,
                ping.rtts_us.len(),
            ),
        ] {
            if blocks.iter().sum::<usize>() != rtts {
                return Err(self.fail(
                    format!("{at}.{field}"),
                    format!("{blocks:?}"),
                    "the blocks do not add up to the RTTs of their pings",
                ));
            }
        }
        if off.block_rtts.len() != off.profiled_block_rtts.len() {
            return Err(self.fail(
                format!("{at}.block_rtts"),
                off.block_rtts.len(),
                "not as many blocks as the profiled pings had: the blocks pair up",
            ));
        }
        Ok(())
    }

    fn path_result(&self, at: &str, p: &PathResult) -> Result<(), InputError> {
        self.ping(at, &p.ping)?;
        self.amount(
            || format!("{at}.iperf3.receiver_bps"),
            p.iperf3.receiver_bps,
        )?;
        self.amount(|| format!("{at}.iperf3.duration_s"), p.iperf3.duration_s)?;
        let ab = &p.ab;
        self.amount(
            || format!("{at}.ab.requests_per_second"),
            ab.requests_per_second,
        )?;
        self.amount(
            || format!("{at}.ab.mean_time_per_request_ms"),
            ab.mean_time_per_request_ms,
        )?;
        self.amount(|| format!("{at}.ab.time_taken_s"), ab.time_taken_s)?;
        if ab.complete_requests > 0 && ab.requests_per_second == 0.0 {
            return Err(self.fail(
                format!("{at}.ab.requests_per_second"),
                0,
                "requests completed at a rate of zero",
            ));
        }
        if let Some(cpu) = p.ab_cpu_ns_per_request {
            self.amount(|| format!("{at}.ab_cpu_ns_per_request"), cpu)?;
        }
        if let Some(off) = &p.ping_agents_off {
            self.agents_off(&format!("{at}.ping_agents_off"), &p.ping, off)?;
        }
        for (i, run) in p
            .ab_agents_off
            .iter()
            .flat_map(|o| o.runs.iter())
            .enumerate()
        {
            let at = format!("{at}.ab_agents_off.runs[{i}]");
            self.ab_rate_and_cpu(&at, &run.ab, "cpu_ns_per_request", run.cpu_ns_per_request)?;
        }
        Ok(())
    }

    /// An ab run's rate, and its CPU time per request, found at `at.cpu_field`.
    fn ab_rate_and_cpu(
        &self,
        at: &str,
        ab: &AbReport,
        cpu_field: &str,
        cpu: Option<f64>,
    ) -> Result<(), InputError> {
        self.amount(
            || format!("{at}.ab.requests_per_second"),
            ab.requests_per_second,
        )?;
        match cpu {
            Some(cpu) => self.amount(|| format!("{at}.{cpu_field}"), cpu),
            None => Ok(()),
        }
    }
}

/// Checks `validate.json`: every sample's ping and ab, and that each check has its rounds and
/// its profiled `a`.
pub fn validate_result(path: &Path, r: &ValidateResult) -> Result<(), InputError> {
    let c = Check { path };
    for (i, check) in r.checks.iter().enumerate() {
        let at = format!("checks[{i}] ({})", check.check);
        if check.rounds.is_empty() {
            return Err(c.fail(
                format!("{at}.rounds"),
                "[]",
                "a check without rounds measured nothing",
            ));
        }
        if !check.profiled.iter().any(|p| p.side == Side::A) {
            return Err(c.fail(
                format!("{at}.profiled"),
                check.profiled.len(),
                "no profiled `a` run to predict from",
            ));
        }
        let mut samples: Vec<(String, &Sample)> = Vec::new();
        for (j, p) in check.profiled.iter().enumerate() {
            samples.push((format!("{at}.profiled[{j}].sample"), &p.sample));
            if let Some(off) = &p.ping_agents_off {
                c.agents_off(
                    &format!("{at}.profiled[{j}].ping_agents_off"),
                    &p.sample.ping,
                    off,
                )?;
            }
            for (k, run) in p.ab_agents_off.iter().flat_map(|o| &o.runs).enumerate() {
                c.ab_rate_and_cpu(
                    &format!("{at}.profiled[{j}].ab_agents_off.runs[{k}]"),
                    &run.ab,
                    "cpu_ns_per_request",
                    run.cpu_ns_per_request,
                )?;
            }
        }
        for (j, round) in check.rounds.iter().enumerate() {
            samples.push((format!("{at}.rounds[{j}].a"), &round.a));
            samples.push((format!("{at}.rounds[{j}].b"), &round.b));
        }
        for (field, s) in samples {
            c.ping(&field, &s.ping)?;
            c.ab_rate_and_cpu(
                &field,
                &s.ab,
                "ab_cpu_ns_per_request",
                s.ab_cpu_ns_per_request,
            )?;
        }
    }
    Ok(())
}

/// Checks one `<mode>.json`.
pub fn mode_result(path: &Path, r: &ModeResult) -> Result<(), InputError> {
    let c = Check { path };
    c.amount(|| "duration_s".to_owned(), r.duration_s)?;
    if r.environment.cpus == 0 {
        return Err(c.fail(
            "environment.cpus".to_owned(),
            0,
            "a machine has at least one CPU",
        ));
    }
    c.path_result("host_path", &r.host_path)?;
    if let Some(pod) = &r.pod_path {
        c.path_result("pod_path", pod)?;
    }
    Ok(())
}

/// Checks one agent report.
pub fn agent_report(path: &Path, r: &AgentReport, sample: u32) -> Result<(), InputError> {
    let c = Check { path };
    c.amount(|| "elapsed_s".to_owned(), r.elapsed_s)?;
    c.amount(|| "attach_ms".to_owned(), r.attach_ms)?;
    if sample == 0 || !sample.is_power_of_two() {
        return Err(c.fail(
            "sample".to_owned(),
            sample,
            "1 in N flows is followed, N a power of two from 1",
        ));
    }
    // Times are measured on different clocks: allow a rounding's worth over the elapsed time.
    let within_elapsed = |s: f64| s <= r.elapsed_s * 1.01 + 0.01;
    if let Some(stats_s) = r.stats_s {
        c.amount(|| "stats_s".to_owned(), stats_s)?;
        if !within_elapsed(stats_s) {
            return Err(c.fail(
                "stats_s".to_owned(),
                stats_s,
                "statistics on for longer than the report covers (elapsed_s)",
            ));
        }
    }
    if let Some(duty) = &r.duty {
        c.amount(|| "duty.attached_s".to_owned(), duty.attached_s)?;
        if !within_elapsed(duty.attached_s) {
            return Err(c.fail(
                "duty.attached_s".to_owned(),
                duty.attached_s,
                "attached for longer than the report covers (elapsed_s)",
            ));
        }
    }
    for (i, s) in r.segments.iter().enumerate() {
        let field = |name: &str| format!("segments[{i}] ({} -> {}).{name}", s.from_name, s.to_name);
        c.amount(|| field("mean_ns"), s.mean_ns)?;
        if !(s.p50_ns <= s.p90_ns && s.p90_ns <= s.p99_ns) {
            return Err(c.fail(
                field("p50_ns"),
                format!("{} / {} / {}", s.p50_ns, s.p90_ns, s.p99_ns),
                "p50, p90 and p99 must not decrease",
            ));
        }
        let mut in_buckets = 0u64;
        for [low, count] in &s.buckets {
            if bucket_low(bucket_of(*low)) != *low {
                return Err(c.fail(
                    field("buckets"),
                    low,
                    "not a bucket's low bound in the agent's histogram layout",
                ));
            }
            in_buckets = in_buckets.saturating_add(*count);
        }
        if in_buckets != s.count {
            return Err(c.fail(
                field("count"),
                s.count,
                "not the sum of the segment's bucket counts",
            ));
        }
    }
    for (i, p) in r.programs.iter().enumerate() {
        c.amount(
            || format!("programs[{i}] ({}).ns_per_run", p.name),
            p.ns_per_run,
        )?;
    }
    Ok(())
}
