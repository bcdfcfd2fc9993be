//! `ping` output, both the iputils and the busybox format.
//!
//! The two differ only in details we can be lenient about: `icmp_seq=` vs `seq=` on reply
//! lines, and `N received` vs `N packets received` on the summary line. The final
//! `rtt min/avg/max` line is ignored because its values are recomputed from the replies.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{first_line_excerpt, first_token, ParseError};

const TOOL: &str = "ping";

/// What one `ping` run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingReport {
    /// From the summary line; without one, the number of reply lines.
    pub transmitted: u64,
    pub received: u64,
    /// False when the statistics block is missing (e.g. output quoted without it), in which
    /// case `transmitted` cannot show loss.
    pub summary_present: bool,
    /// Every reply's RTT in microseconds, in arrival order.
    pub rtts_us: Vec<f64>,
    /// `None` when no reply arrived.
    pub stats: Option<RttStats>,
}

/// Summary statistics of a set of RTTs, in milliseconds like ping prints them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RttStats {
    pub count: u64,
    pub min_ms: f64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl RttStats {
    /// Statistics of `samples` (microseconds). Min, max and mean are exact; percentiles come
    /// from an HDR histogram in nanoseconds with 3 significant digits, so they are the upper
    /// edge of a bucket at most 0.1% wide. Negative and non-finite samples are skipped since
    /// they cannot be RTTs; `None` if nothing is left.
    pub fn from_samples_us(samples: &[f64]) -> Option<RttStats> {
        let valid: Vec<f64> = samples
            .iter()
            .copied()
            .filter(|s| is_valid_rtt(*s))
            .collect();
        if valid.is_empty() {
            return None;
        }
        let hist = histogram_from_us(&valid);
        let ns_to_ms = |ns: u64| ns as f64 / 1e6;
        let sum_us: f64 = valid.iter().sum();
        Some(RttStats {
            count: valid.len() as u64,
            min_ms: valid.iter().copied().fold(f64::INFINITY, f64::min) / 1e3,
            avg_ms: sum_us / valid.len() as f64 / 1e3,
            p50_ms: ns_to_ms(hist.value_at_quantile(0.50)),
            p90_ms: ns_to_ms(hist.value_at_quantile(0.90)),
            p99_ms: ns_to_ms(hist.value_at_quantile(0.99)),
            max_ms: valid.iter().copied().fold(f64::NEG_INFINITY, f64::max) / 1e3,
        })
    }
}

impl PingReport {
    /// One report of several runs to the same target, in their order: probes and replies
    /// summed, RTTs joined, statistics of them all.
    pub fn concatenated(runs: &[PingReport]) -> PingReport {
        let rtts_us: Vec<f64> = runs
            .iter()
            .flat_map(|r| r.rtts_us.iter().copied())
            .collect();
        PingReport {
            transmitted: runs.iter().map(|r| r.transmitted).sum(),
            received: runs.iter().map(|r| r.received).sum(),
            summary_present: runs.iter().all(|r| r.summary_present),
            stats: RttStats::from_samples_us(&rtts_us),
            rtts_us,
        }
    }

    /// Fraction of probes without a reply, 0.0..=1.0. Nothing transmitted means nothing lost.
    pub fn loss_ratio(&self) -> f64 {
        if self.transmitted == 0 {
            return 0.0;
        }
        let lost = self.transmitted.saturating_sub(self.received);
        lost as f64 / self.transmitted as f64
    }

    /// The RTTs as an HDR histogram in nanoseconds (3 significant digits), for merging runs.
    pub fn histogram_ns(&self) -> Histogram<u64> {
        let valid: Vec<f64> = self
            .rtts_us
            .iter()
            .copied()
            .filter(|s| is_valid_rtt(*s))
            .collect();
        histogram_from_us(&valid)
    }
}

fn is_valid_rtt(us: f64) -> bool {
    us.is_finite() && us >= 0.0
}

/// Highest RTT the histogram tracks exactly; anything slower is clamped to it, since no ping
/// waits that long.
const MAX_TRACKED_NS: u64 = 3_600 * 1_000_000_000;

fn histogram_from_us(samples_us: &[f64]) -> Histogram<u64> {
    // Constant, valid bounds (1 <= 1 h in ns, 3 digits), so construction cannot fail.
    let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_NS, 3)
        .expect("bounds 1..=1h with 3 significant digits are valid");
    for us in samples_us {
        hist.saturating_record((us * 1e3).round() as u64);
    }
    // Let callers merge histograms of other ranges into this one.
    hist.auto(true);
    hist
}

/// Parses the full output of `ping` (iputils or busybox).
///
/// Zero replies with a summary (100% loss) is a valid result with `stats: None`. Empty input,
/// text that is not ping output, a header with neither replies nor summary, or a summary
/// disagreeing with the reply lines are errors.
pub fn parse(output: &str) -> Result<PingReport, ParseError> {
    if output.trim().is_empty() {
        return Err(ParseError::Empty { tool: TOOL });
    }

    let mut saw_header = false;
    let mut rtts_us = Vec::new();
    let mut summary: Option<Summary> = None;
    let mut tool_error: Option<String> = None;

    for (idx, raw) in output.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.trim();
        if line.starts_with("PING ") {
            saw_header = true;
        } else if line.contains(" bytes from ") {
            // Duplicates are not counted in the summary's "received"; skipping them keeps one
            // RTT per answered probe.
            if !line.contains("(DUP!)") {
                rtts_us.push(reply_rtt_us(line_no, line)?);
            }
        } else if line.contains(" packets transmitted,") {
            summary = Some(parse_summary(line_no, line)?);
        } else if tool_error.is_none() && line.starts_with("ping: ") {
            tool_error = Some(line.to_string());
        }
    }

    let Some(summary) = summary else {
        if !rtts_us.is_empty() {
            let n = rtts_us.len() as u64;
            return Ok(report(n, n, false, rtts_us));
        }
        if let Some(message) = tool_error {
            return Err(ParseError::ToolReported {
                tool: TOOL,
                message,
            });
        }
        if saw_header {
            return Err(ParseError::Truncated {
                tool: TOOL,
                missing: "reply lines or 'packets transmitted' summary",
            });
        }
        return Err(ParseError::Unrecognized {
            tool: TOOL,
            first_line: first_line_excerpt(output),
        });
    };

    if summary.received > summary.transmitted {
        return Err(ParseError::Malformed {
            tool: TOOL,
            line: summary.line,
            text: summary.text,
            reason: "more replies received than probes transmitted",
        });
    }
    if summary.received != rtts_us.len() as u64 {
        return Err(ParseError::Inconsistent {
            tool: TOOL,
            what: "received replies",
            reported: summary.received,
            found: rtts_us.len() as u64,
        });
    }
    Ok(report(summary.transmitted, summary.received, true, rtts_us))
}

fn report(transmitted: u64, received: u64, summary_present: bool, rtts_us: Vec<f64>) -> PingReport {
    let stats = RttStats::from_samples_us(&rtts_us);
    PingReport {
        transmitted,
        received,
        summary_present,
        rtts_us,
        stats,
    }
}

/// The RTT of a reply line such as `64 bytes from 198.19.2.2: seq=0 ttl=62 time=0.386 ms`.
fn reply_rtt_us(line_no: usize, line: &str) -> Result<f64, ParseError> {
    let malformed = |reason| ParseError::Malformed {
        tool: TOOL,
        line: line_no,
        text: line.to_string(),
        reason,
    };
    let mut tokens = line.split_whitespace();
    let value = tokens
        .find_map(|t| t.strip_prefix("time="))
        .ok_or_else(|| {
            malformed("reply has no time= field (payload too small to carry a timestamp?)")
        })?;
    // iputils and busybox both print "time=X ms"; accept "time=Xms" too rather than guess units.
    let (number, unit) = match value.strip_suffix("ms") {
        Some(number) => (number, "ms"),
        None => (value, tokens.next().unwrap_or("")),
    };
    if unit != "ms" {
        return Err(malformed("RTT unit is not ms"));
    }
    let ms: f64 = number
        .parse()
        .map_err(|_| malformed("RTT is not a number"))?;
    if !is_valid_rtt(ms) {
        return Err(malformed("RTT is negative or not finite"));
    }
    Ok(ms * 1e3)
}

struct Summary {
    line: usize,
    text: String,
    transmitted: u64,
    received: u64,
}

/// `20 packets transmitted, 20 received, 0% packet loss, time 326ms` (iputils) or
/// `10 packets transmitted, 10 packets received, 0% packet loss` (busybox).
fn parse_summary(line_no: usize, line: &str) -> Result<Summary, ParseError> {
    let mut parts = line.split(',');
    let sent_part = parts.next().unwrap_or("");
    let recv_part = parts.next().unwrap_or("");
    if !recv_part.contains("received") {
        return Err(ParseError::Malformed {
            tool: TOOL,
            line: line_no,
            text: line.to_string(),
            reason: "summary has no 'received' count after 'transmitted'",
        });
    }
    let transmitted = first_token(
        TOOL,
        line_no,
        line,
        sent_part,
        "transmitted count is not a whole number",
    )?;
    let received = first_token(
        TOOL,
        line_no,
        line,
        recv_part,
        "received count is not a whole number",
    )?;
    Ok(Summary {
        line: line_no,
        text: line.to_string(),
        transmitted,
        received,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPUTILS_LOOPBACK: &str = fixture!("ping", "iputils-loopback.txt");
    const BUSYBOX_LOOPBACK: &str = fixture!("ping", "busybox-loopback.txt");
    const IPUTILS_LOSS: &str = fixture!("ping", "iputils-loopback-100-loss.txt");
    const BUSYBOX_LOSS: &str = fixture!("ping", "busybox-loopback-100-loss.txt");
    const IPUTILS_STUDY: &str = fixture!("ping", "iputils-study-2016-physical.txt");
    const BUSYBOX_STUDY: &str = fixture!("ping", "busybox-study-2016-hostgw.txt");

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn first_lines(text: &str, n: usize) -> String {
        text.lines().take(n).map(|l| format!("{l}\n")).collect()
    }

    /// The loopback capture (20 replies) and the 100%-loss one (3 probes, none back), joined:
    /// 23 probes, 20 replies in order, statistics of the 20.
    #[test]
    fn runs_concatenate_in_order() {
        let a = parse(IPUTILS_LOOPBACK).unwrap();
        let b = parse(IPUTILS_LOSS).unwrap();
        let joined = PingReport::concatenated(&[a.clone(), b.clone()]);
        assert_eq!(joined.transmitted, a.transmitted + b.transmitted);
        assert_eq!(joined.received, 20);
        assert_eq!(joined.rtts_us, a.rtts_us);
        assert_eq!(joined.stats, a.stats);
        let twice = PingReport::concatenated(&[a.clone(), a.clone()]);
        assert_eq!(twice.rtts_us.len(), 40);
        assert_eq!(twice.stats.unwrap().count, 40);
        assert_eq!(twice.stats.unwrap().p50_ms, a.stats.unwrap().p50_ms);
    }

    #[test]
    fn iputils_loopback_capture() {
        let r = parse(IPUTILS_LOOPBACK).unwrap();
        assert_eq!(
            (r.transmitted, r.received, r.summary_present),
            (20, 20, true)
        );
        assert_eq!(r.rtts_us.len(), 20);
        assert_eq!(r.rtts_us[0], 127.0);
        assert_eq!(r.rtts_us[19], 37.0);
        let s = r.stats.unwrap();
        assert_eq!(s.count, 20);
        // ping's own summary: rtt min/avg/max/mdev = 0.028/0.039/0.127/0.020 ms
        assert!(close(s.min_ms, 0.028, 1e-9), "{s:?}");
        assert!(close(s.max_ms, 0.127, 1e-9), "{s:?}");
        assert!(close(s.avg_ms, 0.039, 0.0005), "{s:?}");
        assert_eq!(r.loss_ratio(), 0.0);
    }

    #[test]
    fn busybox_loopback_capture() {
        let r = parse(BUSYBOX_LOOPBACK).unwrap();
        assert_eq!(
            (r.transmitted, r.received, r.summary_present),
            (10, 10, true)
        );
        assert_eq!(r.rtts_us[0], 43.0);
        let s = r.stats.unwrap();
        // busybox's own summary: round-trip min/avg/max = 0.043/0.055/0.060 ms
        assert!(close(s.min_ms, 0.043, 1e-9), "{s:?}");
        assert!(close(s.avg_ms, 0.055, 0.0005), "{s:?}");
        assert!(close(s.max_ms, 0.060, 1e-9), "{s:?}");
    }

    #[test]
    fn total_loss_is_a_result_not_an_error() {
        for (text, transmitted) in [(IPUTILS_LOSS, 3), (BUSYBOX_LOSS, 3)] {
            let r = parse(text).unwrap();
            assert_eq!(
                (r.transmitted, r.received, r.summary_present),
                (transmitted, 0, true)
            );
            assert!(r.rtts_us.is_empty());
            assert_eq!(r.stats, None);
            assert_eq!(r.loss_ratio(), 1.0);
            assert_eq!(r.histogram_ns().len(), 0);
        }
    }

    #[test]
    fn study_iputils_excerpt_without_summary() {
        let r = parse(IPUTILS_STUDY).unwrap();
        assert_eq!(
            (r.transmitted, r.received, r.summary_present),
            (7, 7, false)
        );
        assert_eq!(
            r.rtts_us,
            vec![151.0, 121.0, 138.0, 147.0, 145.0, 116.0, 154.0]
        );
        let s = r.stats.unwrap();
        // The study reports 0.1389 ms for these seven replies.
        assert!(close(s.avg_ms, 0.1389, 0.00005), "{s:?}");
        assert!(
            close(s.min_ms, 0.116, 1e-9) && close(s.max_ms, 0.154, 1e-9),
            "{s:?}"
        );
    }

    #[test]
    fn study_busybox_excerpt_without_summary() {
        let r = parse(BUSYBOX_STUDY).unwrap();
        assert_eq!(
            (r.transmitted, r.received, r.summary_present),
            (9, 9, false)
        );
        let s = r.stats.unwrap();
        assert_eq!(s.count, 9);
        // The study reports 0.297111 ms.
        assert!(close(s.avg_ms, 0.297111, 0.000001), "{s:?}");
        assert!(
            close(s.min_ms, 0.197, 1e-9) && close(s.max_ms, 0.386, 1e-9),
            "{s:?}"
        );
        // Sorted: 197 258 261 267 299 318 320 368 386; the median is the 5th.
        assert!(close(s.p50_ms, 0.299, 0.299 * 0.001), "{s:?}");
        assert!(close(s.p90_ms, 0.386, 0.386 * 0.001), "{s:?}");
        assert!(close(s.p99_ms, 0.386, 0.386 * 0.001), "{s:?}");
    }

    #[test]
    fn histogram_holds_every_reply_in_nanoseconds() {
        let r = parse(BUSYBOX_STUDY).unwrap();
        let h = r.histogram_ns();
        assert_eq!(h.len(), 9);
        assert!(h.equivalent(h.min(), 197_000), "min {}", h.min());
        assert!(h.equivalent(h.max(), 386_000), "max {}", h.max());
    }

    #[test]
    fn stats_of_no_samples_is_none() {
        assert_eq!(RttStats::from_samples_us(&[]), None);
        assert_eq!(RttStats::from_samples_us(&[f64::NAN, -1.0]), None);
        let s = RttStats::from_samples_us(&[100.0, f64::INFINITY, 300.0]).unwrap();
        assert_eq!(s.count, 2);
        assert!(close(s.avg_ms, 0.2, 1e-12));
    }

    #[test]
    fn summary_reporting_more_replies_than_lines_is_inconsistent() {
        // As if ping ran with -q, or reply lines were lost: the summary claims 20 replies.
        let summary_only: String = IPUTILS_LOOPBACK
            .lines()
            .filter(|l| !l.contains(" bytes from "))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = parse(&summary_only).unwrap_err();
        assert!(
            matches!(
                err,
                ParseError::Inconsistent {
                    reported: 20,
                    found: 0,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn header_only_is_truncated() {
        let err = parse(&first_lines(BUSYBOX_LOOPBACK, 1)).unwrap_err();
        assert!(
            matches!(err, ParseError::Truncated { tool: "ping", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn cut_before_summary_falls_back_to_reply_count() {
        // Header plus the first 5 replies of the real capture.
        let r = parse(&first_lines(IPUTILS_LOOPBACK, 6)).unwrap();
        assert_eq!(
            (r.transmitted, r.received, r.summary_present),
            (5, 5, false)
        );
        assert_eq!(r.rtts_us, vec![127.0, 30.0, 31.0, 35.0, 35.0]);
    }

    #[test]
    fn empty_and_garbage_are_errors() {
        assert!(matches!(parse("").unwrap_err(), ParseError::Empty { .. }));
        assert!(matches!(
            parse(" \n\t\n").unwrap_err(),
            ParseError::Empty { .. }
        ));
        let err = parse("HTTP/1.1 200 OK\nServer: nginx\n").unwrap_err();
        match err {
            ParseError::Unrecognized { first_line, .. } => {
                assert_eq!(first_line, "HTTP/1.1 200 OK")
            }
            other => panic!("expected Unrecognized, got {other:?}"),
        }
    }

    #[test]
    fn ping_error_message_is_reported() {
        let err = parse("ping: connect: Network is unreachable\n").unwrap_err();
        match err {
            ParseError::ToolReported { message, .. } => {
                assert_eq!(message, "ping: connect: Network is unreachable")
            }
            other => panic!("expected ToolReported, got {other:?}"),
        }
    }

    #[test]
    fn bad_rtt_is_malformed_with_its_line_number() {
        let text = IPUTILS_LOOPBACK.replacen("time=0.031 ms", "time=zero ms", 1);
        let err = parse(&text).unwrap_err();
        // The first 0.031 ms reply is icmp_seq=3, on line 4.
        assert!(
            matches!(
                err,
                ParseError::Malformed {
                    line: 4,
                    reason: "RTT is not a number",
                    ..
                }
            ),
            "{err:?}"
        );

        let text = BUSYBOX_LOOPBACK.replacen("time=0.043 ms", "time=0.043 s", 1);
        let err = parse(&text).unwrap_err();
        assert!(
            matches!(
                err,
                ParseError::Malformed {
                    line: 2,
                    reason: "RTT unit is not ms",
                    ..
                }
            ),
            "{err:?}"
        );

        let text = BUSYBOX_LOOPBACK.replacen(" time=0.043 ms", "", 1);
        let err = parse(&text).unwrap_err();
        assert!(
            matches!(err, ParseError::Malformed { line: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn bad_summary_is_malformed() {
        let text = IPUTILS_LOOPBACK.replace("20 packets transmitted", "many packets transmitted");
        let err = parse(&text).unwrap_err();
        assert!(
            matches!(err, ParseError::Malformed { line: 24, .. }),
            "{err:?}"
        );

        let text = BUSYBOX_LOSS.replace(
            "3 packets transmitted, 0 packets",
            "1 packets transmitted, 2 packets",
        );
        let err = parse(&text).unwrap_err();
        assert!(
            matches!(
                err,
                ParseError::Malformed {
                    reason: "more replies received than probes transmitted",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn duplicates_are_not_extra_samples() {
        let dup = "64 bytes from 127.0.0.1: icmp_seq=20 ttl=64 time=0.040 ms (DUP!)\n";
        let text = IPUTILS_LOOPBACK.replacen("\n\n---", &format!("\n{dup}\n---"), 1);
        assert!(text.contains("(DUP!)"));
        let r = parse(&text).unwrap();
        assert_eq!(r.rtts_us.len(), 20);
    }

    #[test]
    fn round_trips_through_json() {
        let r = parse(BUSYBOX_STUDY).unwrap();
        let back: PingReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
