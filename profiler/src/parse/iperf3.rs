//! `iperf3 -J` output (checked against iperf 3.12, TCP and UDP).
//!
//! iperf3 reports failures inside the JSON as a top-level `"error"` string, next to an
//! otherwise empty `end` object, so that key is checked before anything else is required.

use serde::{Deserialize, Serialize};

use super::{first_line_excerpt, ParseError};

const TOOL: &str = "iperf3";

/// What one iperf3 client run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Iperf3Report {
    /// `start.test_start.protocol`, e.g. "TCP" or "UDP".
    pub protocol: String,
    /// Measured sending time, `end.sum_sent.seconds` (slightly above the requested `-t`).
    pub duration_s: f64,
    pub sender_bps: f64,
    pub receiver_bps: f64,
    pub bytes_received: u64,
    /// `end.sum_sent.retransmits`; absent for UDP and where the kernel does not expose it.
    pub retransmits: Option<u64>,
    pub sender_cpu_percent: Option<f64>,
    pub receiver_cpu_percent: Option<f64>,
    /// Per-interval throughput, without the `-O` warm-up intervals (the end sums exclude them too).
    pub intervals_bps: Vec<f64>,
}

/// Only the `error` key, read first: on failure the rest of the document is hollow.
#[derive(Deserialize)]
struct ErrorProbe {
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Output {
    start: Start,
    intervals: Vec<Interval>,
    end: End,
}

#[derive(Deserialize)]
struct Start {
    test_start: TestStart,
}

#[derive(Deserialize)]
struct TestStart {
    protocol: String,
}

#[derive(Deserialize)]
struct Interval {
    sum: IntervalSum,
}

#[derive(Deserialize)]
struct IntervalSum {
    bits_per_second: f64,
    // Older releases omit it; they had no omit phase to flag.
    #[serde(default)]
    omitted: bool,
}

#[derive(Deserialize)]
struct End {
    sum_sent: SumSent,
    sum_received: SumReceived,
    // Missing when the run stopped before the CPU sampling.
    #[serde(default)]
    cpu_utilization_percent: Option<CpuUtilization>,
}

#[derive(Deserialize)]
struct SumSent {
    seconds: f64,
    bits_per_second: f64,
    // UDP has no retransmits, and some platforms cannot report them for TCP.
    #[serde(default)]
    retransmits: Option<u64>,
}

#[derive(Deserialize)]
struct SumReceived {
    bytes: u64,
    bits_per_second: f64,
}

#[derive(Deserialize)]
struct CpuUtilization {
    host_total: f64,
    remote_total: f64,
}

/// Parses the JSON document printed by `iperf3 -c ... -J`.
///
/// An `"error"` key becomes [`ParseError::ToolReported`] with iperf3's message; a document cut
/// off mid-way is [`ParseError::Truncated`]; a missing required field (e.g. `end.sum_received`)
/// is [`ParseError::Json`] naming it, never a zero.
pub fn parse(json: &str) -> Result<Iperf3Report, ParseError> {
    if json.trim().is_empty() {
        return Err(ParseError::Empty { tool: TOOL });
    }
    // Without -J iperf3 prints a text table; say so instead of quoting a JSON syntax error.
    if !json.trim_start().starts_with('{') {
        return Err(ParseError::Unrecognized {
            tool: TOOL,
            first_line: first_line_excerpt(json),
        });
    }
    let probe: ErrorProbe = serde_json::from_str(json).map_err(json_error)?;
    if let Some(message) = probe.error {
        return Err(ParseError::ToolReported {
            tool: TOOL,
            message,
        });
    }
    let out: Output = serde_json::from_str(json).map_err(json_error)?;

    let intervals_bps = out
        .intervals
        .iter()
        .filter(|i| !i.sum.omitted)
        .map(|i| i.sum.bits_per_second)
        .collect();
    let (sender_cpu_percent, receiver_cpu_percent) = match out.end.cpu_utilization_percent {
        Some(cpu) => (Some(cpu.host_total), Some(cpu.remote_total)),
        None => (None, None),
    };
    Ok(Iperf3Report {
        protocol: out.start.test_start.protocol,
        duration_s: out.end.sum_sent.seconds,
        sender_bps: out.end.sum_sent.bits_per_second,
        receiver_bps: out.end.sum_received.bits_per_second,
        bytes_received: out.end.sum_received.bytes,
        retransmits: out.end.sum_sent.retransmits,
        sender_cpu_percent,
        receiver_cpu_percent,
        intervals_bps,
    })
}

fn json_error(source: serde_json::Error) -> ParseError {
    if source.is_eof() {
        ParseError::Truncated {
            tool: TOOL,
            missing: "end of the JSON document",
        }
    } else {
        ParseError::Json { tool: TOOL, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP_1S: &str = fixture!("iperf3", "tcp-loopback-1s.json");
    const TCP_2S: &str = fixture!("iperf3", "tcp-loopback-2s-4intervals.json");
    const UDP_1S: &str = fixture!("iperf3", "udp-loopback-100M-1s.json");
    const REFUSED: &str = fixture!("iperf3", "error-connection-refused.json");

    /// serde_json (without its float_roundtrip feature) may land one ULP off the nearest
    /// double, so values read from the fixtures are compared with a relative tolerance.
    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() <= b.abs() * 1e-12
    }

    fn approx_all(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| approx(*x, *y))
    }

    #[test]
    fn tcp_one_second_capture() {
        let r = parse(TCP_1S).unwrap();
        assert_eq!(r.protocol, "TCP");
        assert!(approx(r.duration_s, 1.008147), "{}", r.duration_s);
        assert!(approx(r.sender_bps, 8924077619.63285), "{}", r.sender_bps);
        assert!(
            approx(r.receiver_bps, 8908154847.42299),
            "{}",
            r.receiver_bps
        );
        assert_eq!(r.bytes_received, 1124597760);
        assert_eq!(r.retransmits, Some(2));
        assert!(
            approx(r.sender_cpu_percent.unwrap(), 20.774662839074228),
            "{r:?}"
        );
        assert!(
            approx(r.receiver_cpu_percent.unwrap(), 27.614459978613016),
            "{r:?}"
        );
        assert!(approx_all(&r.intervals_bps, &[8924077608.422024]), "{r:?}");
    }

    #[test]
    fn tcp_capture_with_four_intervals() {
        let r = parse(TCP_2S).unwrap();
        assert!(approx(r.duration_s, 2.004106), "{}", r.duration_s);
        assert!(approx(r.sender_bps, 18877555418.725357), "{}", r.sender_bps);
        assert!(
            approx(r.receiver_bps, 18845217457.14293),
            "{}",
            r.receiver_bps
        );
        assert_eq!(r.bytes_received, 4729077760);
        assert_eq!(r.retransmits, Some(1));
        let expected = [
            18863992207.01466,
            19679826438.995987,
            17483569890.55873,
            19479080448.14282,
        ];
        assert!(
            approx_all(&r.intervals_bps, &expected),
            "{:?}",
            r.intervals_bps
        );
    }

    #[test]
    fn udp_capture_has_no_retransmits() {
        let r = parse(UDP_1S).unwrap();
        assert_eq!(r.protocol, "UDP");
        assert_eq!(r.retransmits, None);
        assert_eq!(r.bytes_received, 12517376);
        assert!(
            approx(r.receiver_bps, 100121186.42881566),
            "{}",
            r.receiver_bps
        );
        assert_eq!(r.intervals_bps.len(), 1);
    }

    #[test]
    fn error_key_is_reported_with_iperf3_message() {
        match parse(REFUSED).unwrap_err() {
            ParseError::ToolReported { tool, message } => {
                assert_eq!(tool, "iperf3");
                assert_eq!(message, "unable to connect to server: Connection refused");
            }
            other => panic!("expected ToolReported, got {other:?}"),
        }
    }

    #[test]
    fn json_cut_mid_way_is_truncated() {
        for cut in [1, TCP_1S.len() / 3, TCP_1S.len() / 2, TCP_1S.len() - 3] {
            let err = parse(&TCP_1S[..cut]).unwrap_err();
            assert!(
                matches!(err, ParseError::Truncated { tool: "iperf3", .. }),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn missing_sum_received_is_an_error_not_zero() {
        let mut doc: serde_json::Value = serde_json::from_str(TCP_1S).unwrap();
        doc["end"].as_object_mut().unwrap().remove("sum_received");
        let err = parse(&doc.to_string()).unwrap_err();
        match err {
            ParseError::Json { source, .. } => {
                assert!(source.to_string().contains("sum_received"), "{source}")
            }
            other => panic!("expected Json, got {other:?}"),
        }
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let mut doc: serde_json::Value = serde_json::from_str(TCP_1S).unwrap();
        doc["end"]
            .as_object_mut()
            .unwrap()
            .remove("cpu_utilization_percent");
        doc["end"]["sum_sent"]
            .as_object_mut()
            .unwrap()
            .remove("retransmits");
        let r = parse(&doc.to_string()).unwrap();
        assert_eq!(
            (r.retransmits, r.sender_cpu_percent, r.receiver_cpu_percent),
            (None, None, None)
        );
        assert_eq!(r.bytes_received, 1124597760);
    }

    #[test]
    fn omitted_intervals_are_dropped() {
        let mut doc: serde_json::Value = serde_json::from_str(TCP_2S).unwrap();
        doc["intervals"][0]["sum"]["omitted"] = serde_json::Value::Bool(true);
        let r = parse(&doc.to_string()).unwrap();
        assert_eq!(r.intervals_bps.len(), 3);
        assert!(
            approx(r.intervals_bps[0], 19679826438.995987),
            "{:?}",
            r.intervals_bps
        );
    }

    #[test]
    fn wrong_types_are_json_errors() {
        let mut doc: serde_json::Value = serde_json::from_str(TCP_1S).unwrap();
        doc["end"]["sum_received"]["bytes"] = serde_json::Value::from("lots");
        let err = parse(&doc.to_string()).unwrap_err();
        assert!(
            matches!(err, ParseError::Json { tool: "iperf3", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn empty_and_non_json_are_errors() {
        assert!(matches!(parse("").unwrap_err(), ParseError::Empty { .. }));
        // What iperf3 prints without -J.
        let err = parse("Connecting to host 127.0.0.1, port 5299\n[  5] local ...").unwrap_err();
        match err {
            ParseError::Unrecognized { first_line, .. } => {
                assert_eq!(first_line, "Connecting to host 127.0.0.1, port 5299")
            }
            other => panic!("expected Unrecognized, got {other:?}"),
        }
        // A JSON value that is not an iperf3 document.
        let err = parse("{\"start\": {}}").unwrap_err();
        assert!(
            matches!(err, ParseError::Json { tool: "iperf3", .. }),
            "{err:?}"
        );
    }
}
