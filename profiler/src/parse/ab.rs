//! ApacheBench (`ab`) text output.
//!
//! Pass stdout and stderr together: ab's fatal errors (`apr_socket_recv: ...`) go to stderr
//! and are the only explanation when the results block is missing. Lines are matched by their
//! label, not their position, so the optional lines (`Write errors`, `Keep-Alive requests`,
//! `SSL/TLS Protocol`, warnings, progress) and leading indentation do not matter.

use serde::{Deserialize, Serialize};

use super::{first_finite, first_line_excerpt, first_token, ParseError};

const TOOL: &str = "ab";

/// What one ab run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbReport {
    /// `None` when the line is missing (older quotes) or empty (the server sent no header).
    pub server_software: Option<String>,
    pub document_length_bytes: u64,
    pub concurrency: u64,
    pub time_taken_s: f64,
    pub complete_requests: u64,
    /// Can exceed `complete_requests`: ab counts a request once per failure kind.
    pub failed_requests: u64,
    pub non_2xx_responses: u64,
    pub requests_per_second: f64,
    /// Mean latency seen by one client, `Time per request ... (mean)`.
    pub mean_time_per_request_ms: f64,
    /// `Time per request ... (mean, across all concurrent requests)`, i.e. 1 / throughput.
    pub mean_time_per_request_all_ms: f64,
    pub transfer_rate_kbytes_s: f64,
    /// `None` when ab ran with `-S`, whose table has no sd and median columns.
    pub connection_times: Option<ConnectionTimes>,
    /// (percent, ms) rows from 50 to 100; empty when ab ran with `-d`.
    pub percentiles_ms: Vec<(u8, f64)>,
}

/// The `Connection Times (ms)` table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConnectionTimes {
    pub connect: TimeRow,
    pub processing: TimeRow,
    pub waiting: TimeRow,
    pub total: TimeRow,
}

/// One row of the table, in ms (ab rounds all but `sd` to whole milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimeRow {
    pub min: f64,
    pub mean: f64,
    pub sd: f64,
    pub median: f64,
    pub max: f64,
}

const ROW_NAMES: [&str; 4] = ["Connect", "Processing", "Waiting", "Total"];
const ROW_MISSING: [&str; 4] = [
    "'Connect:' row in the Connection Times table",
    "'Processing:' row in the Connection Times table",
    "'Waiting:' row in the Connection Times table",
    "'Total:' row in the Connection Times table",
];
/// Columns of a table row: min mean sd median max, or min avg max with `ab -S`.
const FULL_ROW: usize = 5;
const SHORT_ROW: usize = 3;

/// Everything found so far; required lines are checked once the whole output is read.
#[derive(Default)]
struct Seen {
    any_ab_line: bool,
    fatal: Option<String>,
    server_software: Option<String>,
    document_length: Option<u64>,
    concurrency: Option<u64>,
    time_taken: Option<f64>,
    complete: Option<u64>,
    failed: Option<u64>,
    non_2xx: Option<u64>,
    rps: Option<f64>,
    per_request: Option<f64>,
    per_request_all: Option<f64>,
    transfer_rate: Option<f64>,
    table_header: bool,
    row_width: Option<usize>,
    rows: [Option<Vec<f64>>; 4],
    percentile_header: bool,
    percentiles: Vec<(u8, f64)>,
}

/// Parses ab's output. See [`ParseError`] for the failure cases: a fatal ab message becomes
/// `ToolReported`, missing required lines `Truncated` (naming the first one), numbers that do
/// not parse `Malformed` with their line number, and a run that completed no request
/// `NothingMeasured`.
pub fn parse(output: &str) -> Result<AbReport, ParseError> {
    if output.trim().is_empty() {
        return Err(ParseError::Empty { tool: TOOL });
    }
    let mut seen = Seen::default();
    for (idx, raw) in output.lines().enumerate() {
        read_line(&mut seen, idx + 1, raw.trim())?;
    }
    finish(seen, output)
}

fn read_line(seen: &mut Seen, line_no: usize, line: &str) -> Result<(), ParseError> {
    // The "(Connect: 0, Receive: 0, Length: 5, Exceptions: 0)" breakdown under "Failed
    // requests" repeats what the total already says.
    if line.is_empty() || line.starts_with('(') {
        return Ok(());
    }
    if line.starts_with("This is ApacheBench") {
        seen.any_ab_line = true;
        return Ok(());
    }
    if line == "Connection Times (ms)" {
        seen.table_header = true;
        return Ok(());
    }
    if line.starts_with("Percentage of the requests served") {
        seen.percentile_header = true;
        return Ok(());
    }
    if seen.percentile_header {
        if let Some(pct) = line
            .split_whitespace()
            .next()
            .and_then(|t| t.strip_suffix('%'))
        {
            return read_percentile(seen, line_no, line, pct);
        }
    }
    let Some((label, value)) = line.split_once(':') else {
        note_fatal(seen, line);
        return Ok(());
    };
    let value = value.trim();
    let known = read_labelled(seen, line_no, line, label.trim(), value)?;
    if known {
        seen.any_ab_line = true;
    } else {
        note_fatal(seen, line);
    }
    Ok(())
}

/// Stores a `Label: value` line; false if the label is not one ab prints in its results.
fn read_labelled(
    seen: &mut Seen,
    n: usize,
    line: &str,
    label: &str,
    value: &str,
) -> Result<bool, ParseError> {
    const WHOLE: &str = "expected a whole number";
    const NUMBER: &str = "expected a number";
    match label {
        "Server Software" => {
            seen.server_software = Some(value.to_string()).filter(|v| !v.is_empty())
        }
        "Document Length" => {
            if value == "Variable" {
                let reason = "document length is 'Variable' (ab -l), a byte count is needed";
                return Err(ParseError::Malformed {
                    tool: TOOL,
                    line: n,
                    text: line.to_string(),
                    reason,
                });
            }
            seen.document_length = Some(first_token(TOOL, n, line, value, WHOLE)?);
        }
        "Concurrency Level" => seen.concurrency = Some(first_token(TOOL, n, line, value, WHOLE)?),
        "Time taken for tests" => {
            seen.time_taken = Some(first_finite(TOOL, n, line, value, NUMBER)?)
        }
        "Complete requests" => seen.complete = Some(first_token(TOOL, n, line, value, WHOLE)?),
        "Failed requests" => seen.failed = Some(first_token(TOOL, n, line, value, WHOLE)?),
        "Non-2xx responses" => seen.non_2xx = Some(first_token(TOOL, n, line, value, WHOLE)?),
        "Requests per second" => seen.rps = Some(first_finite(TOOL, n, line, value, NUMBER)?),
        // Printed twice; only the suffix tells the per-client mean from the per-request one.
        "Time per request" if value.contains("across all") => {
            seen.per_request_all = Some(first_finite(TOOL, n, line, value, NUMBER)?)
        }
        "Time per request" => seen.per_request = Some(first_finite(TOOL, n, line, value, NUMBER)?),
        "Transfer rate" => seen.transfer_rate = Some(first_finite(TOOL, n, line, value, NUMBER)?),
        "Server Hostname"
        | "Server Port"
        | "Document Path"
        | "Total transferred"
        | "HTML transferred"
        | "Write errors"
        | "Keep-Alive requests"
        | "Total body sent"
        | "SSL/TLS Protocol"
        | "TLS Server Name" => {}
        _ => match ROW_NAMES.iter().position(|r| *r == label) {
            Some(i) if seen.table_header => read_row(seen, n, line, i, value)?,
            _ => return Ok(false),
        },
    }
    Ok(true)
}

fn read_row(
    seen: &mut Seen,
    n: usize,
    line: &str,
    row: usize,
    value: &str,
) -> Result<(), ParseError> {
    let malformed = |reason| ParseError::Malformed {
        tool: TOOL,
        line: n,
        text: line.to_string(),
        reason,
    };
    let mut numbers = Vec::with_capacity(FULL_ROW);
    for token in value.split_whitespace() {
        let number: f64 = token
            .parse()
            .map_err(|_| malformed("Connection Times cell is not a number"))?;
        if !number.is_finite() {
            return Err(malformed("Connection Times cell is not finite"));
        }
        numbers.push(number);
    }
    if numbers.len() != FULL_ROW && numbers.len() != SHORT_ROW {
        return Err(malformed(
            "Connection Times row needs 5 columns (3 with ab -S)",
        ));
    }
    match seen.row_width {
        Some(width) if width != numbers.len() => {
            return Err(malformed("Connection Times rows differ in width"))
        }
        _ => seen.row_width = Some(numbers.len()),
    }
    seen.rows[row] = Some(numbers);
    Ok(())
}

fn read_percentile(seen: &mut Seen, n: usize, line: &str, pct: &str) -> Result<(), ParseError> {
    let malformed = |reason| ParseError::Malformed {
        tool: TOOL,
        line: n,
        text: line.to_string(),
        reason,
    };
    let percent: u8 = pct
        .parse()
        .map_err(|_| malformed("percentile is not a whole percent"))?;
    if percent > 100 {
        return Err(malformed("percentile above 100%"));
    }
    let rest = line.split_once('%').map_or("", |(_, rest)| rest);
    let ms = first_finite(TOOL, n, line, rest, "percentile time is not a number")?;
    seen.percentiles.push((percent, ms));
    Ok(())
}

/// Keeps the first line that looks like one of ab's fatal messages.
fn note_fatal(seen: &mut Seen, line: &str) {
    if seen.fatal.is_some() {
        return;
    }
    // apr errors are appended to the "Benchmarking ... (be patient)..." progress line.
    let message = if let Some(pos) = line.find("apr_") {
        &line[pos..]
    } else if line.starts_with("ab: ")
        || line.starts_with("Test aborted after")
        || line.starts_with("Server timed out")
    {
        line
    } else {
        return;
    };
    seen.fatal = Some(message.to_string());
}

fn finish(seen: Seen, output: &str) -> Result<AbReport, ParseError> {
    let required = required_fields(&seen);
    let Some((
        document_length_bytes,
        concurrency,
        time_taken_s,
        complete_requests,
        failed_requests,
    )) = required.head
    else {
        return Err(missing(&seen, output, required.first_missing));
    };
    let Some((
        requests_per_second,
        mean_time_per_request_ms,
        mean_time_per_request_all_ms,
        transfer_rate_kbytes_s,
    )) = required.rates
    else {
        // ab prints no rates when nothing completed or no time elapsed; that is not a crash.
        if seen.fatal.is_none() && complete_requests == 0 {
            let reason = "0 complete requests, so ab printed no rates (is the server answering?)";
            return Err(ParseError::NothingMeasured { tool: TOOL, reason });
        }
        if seen.fatal.is_none() && time_taken_s == 0.0 {
            let reason = "the test took 0.000 s, so ab printed no rates (raise -n)";
            return Err(ParseError::NothingMeasured { tool: TOOL, reason });
        }
        return Err(missing(&seen, output, required.first_missing));
    };

    let connection_times = connection_times(&seen, complete_requests)?;
    if seen.percentile_header && seen.percentiles.last().map(|p| p.0) != Some(100) {
        return Err(ParseError::Truncated {
            tool: TOOL,
            missing: "'100%' row in the percentile table",
        });
    }
    Ok(AbReport {
        server_software: seen.server_software,
        document_length_bytes,
        concurrency,
        time_taken_s,
        complete_requests,
        failed_requests,
        non_2xx_responses: seen.non_2xx.unwrap_or(0),
        requests_per_second,
        mean_time_per_request_ms,
        mean_time_per_request_all_ms,
        transfer_rate_kbytes_s,
        connection_times,
        percentiles_ms: seen.percentiles,
    })
}

type Head = (u64, u64, f64, u64, u64);
type Rates = (f64, f64, f64, f64);

struct Required {
    head: Option<Head>,
    rates: Option<Rates>,
    /// The first required line missing, in the order ab prints them.
    first_missing: &'static str,
}

fn required_fields(s: &Seen) -> Required {
    let checks: [(bool, &'static str); 9] = [
        (s.document_length.is_some(), "'Document Length' line"),
        (s.concurrency.is_some(), "'Concurrency Level' line"),
        (s.time_taken.is_some(), "'Time taken for tests' line"),
        (s.complete.is_some(), "'Complete requests' line"),
        (s.failed.is_some(), "'Failed requests' line"),
        (s.rps.is_some(), "'Requests per second' line"),
        (
            s.per_request.is_some(),
            "'Time per request: ... (mean)' line",
        ),
        (
            s.per_request_all.is_some(),
            "'Time per request: ... (mean, across all concurrent requests)' line",
        ),
        (s.transfer_rate.is_some(), "'Transfer rate' line"),
    ];
    let first_missing = checks
        .iter()
        .find(|(present, _)| !present)
        .map_or("", |(_, name)| name);
    let head = match (
        s.document_length,
        s.concurrency,
        s.time_taken,
        s.complete,
        s.failed,
    ) {
        (Some(d), Some(c), Some(t), Some(ok), Some(bad)) => Some((d, c, t, ok, bad)),
        _ => None,
    };
    let rates = match (s.rps, s.per_request, s.per_request_all, s.transfer_rate) {
        (Some(r), Some(p), Some(a), Some(t)) => Some((r, p, a, t)),
        _ => None,
    };
    Required {
        head,
        rates,
        first_missing,
    }
}

/// The error for a results block that lacks `first_missing`.
fn missing(seen: &Seen, output: &str, first_missing: &'static str) -> ParseError {
    if let Some(message) = &seen.fatal {
        return ParseError::ToolReported {
            tool: TOOL,
            message: message.clone(),
        };
    }
    if !seen.any_ab_line {
        return ParseError::Unrecognized {
            tool: TOOL,
            first_line: first_line_excerpt(output),
        };
    }
    ParseError::Truncated {
        tool: TOOL,
        missing: first_missing,
    }
}

fn connection_times(
    seen: &Seen,
    complete_requests: u64,
) -> Result<Option<ConnectionTimes>, ParseError> {
    if !seen.table_header {
        // ab always prints the table once a request completed, so its absence means a cut.
        if complete_requests > 0 {
            return Err(ParseError::Truncated {
                tool: TOOL,
                missing: "'Connection Times (ms)' table",
            });
        }
        return Ok(None);
    }
    let mut rows = [None; 4];
    for (i, row) in seen.rows.iter().enumerate() {
        let cells = row.as_deref().ok_or(ParseError::Truncated {
            tool: TOOL,
            missing: ROW_MISSING[i],
        })?;
        rows[i] = match *cells {
            [min, mean, sd, median, max] => Some(TimeRow {
                min,
                mean,
                sd,
                median,
                max,
            }),
            _ => None,
        };
    }
    Ok(match rows {
        [Some(connect), Some(processing), Some(waiting), Some(total)] => Some(ConnectionTimes {
            connect,
            processing,
            waiting,
            total,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUDY_PHYSICAL: &str = fixture!("ab", "study-2016-physical-n90000-c50.txt");
    const STUDY_HOSTGW: &str = fixture!("ab", "study-2016-hostgw-n90000-c50.txt");
    const LOOPBACK: &str = fixture!("ab", "nginx-loopback-n2000-c20.txt");
    const LENGTH_FAILURES: &str = fixture!("ab", "nginx-loopback-length-failures.txt");
    const NOT_FOUND: &str = fixture!("ab", "nginx-loopback-404.txt");
    const SHORT_TABLE: &str = fixture!("ab", "nginx-loopback-S-d-n200-c5.txt");
    const RST_KEEP_GOING: &str = fixture!("ab", "rst-server-r-flag-n20-c2.txt");
    const RESET: &str = fixture!("ab", "error-connection-reset.txt");
    const REFUSED: &str = fixture!("ab", "error-connection-refused.txt");
    const TIMEOUT: &str = fixture!("ab", "error-timeout.txt");

    /// The output up to (not including) the first line containing `marker`.
    fn cut_before(text: &str, marker: &str) -> String {
        let end = text.find(marker).expect("marker is in the fixture");
        text[..end].to_string()
    }

    fn expect_truncated(text: &str, expected_missing: &str) {
        match parse(text) {
            Err(ParseError::Truncated {
                tool: "ab",
                missing,
            }) => assert_eq!(missing, expected_missing),
            other => panic!("expected Truncated({expected_missing}), got {other:?}"),
        }
    }

    #[test]
    fn study_physical_capture() {
        let r = parse(STUDY_PHYSICAL).unwrap();
        assert_eq!(r.server_software, None);
        assert_eq!(r.document_length_bytes, 612);
        assert_eq!(r.concurrency, 50);
        assert_eq!(r.time_taken_s, 6.808);
        assert_eq!(
            (r.complete_requests, r.failed_requests, r.non_2xx_responses),
            (90000, 0, 0)
        );
        assert_eq!(r.requests_per_second, 13220.57);
        assert_eq!(r.mean_time_per_request_ms, 3.782);
        assert_eq!(r.mean_time_per_request_all_ms, 0.076);
        assert_eq!(r.transfer_rate_kbytes_s, 10909.55);
        let t = r.connection_times.unwrap();
        assert_eq!(
            t.connect,
            TimeRow {
                min: 0.0,
                mean: 1.0,
                sd: 0.8,
                median: 0.0,
                max: 5.0
            }
        );
        assert_eq!(
            t.processing,
            TimeRow {
                min: 1.0,
                mean: 3.0,
                sd: 1.7,
                median: 3.0,
                max: 14.0
            }
        );
        assert_eq!(
            t.waiting,
            TimeRow {
                min: 0.0,
                mean: 3.0,
                sd: 1.7,
                median: 3.0,
                max: 14.0
            }
        );
        assert_eq!(
            t.total,
            TimeRow {
                min: 1.0,
                mean: 4.0,
                sd: 1.7,
                median: 3.0,
                max: 15.0
            }
        );
        assert_eq!(
            r.percentiles_ms,
            vec![
                (50, 3.0),
                (66, 4.0),
                (75, 4.0),
                (80, 5.0),
                (90, 5.0),
                (95, 6.0),
                (98, 9.0),
                (99, 14.0),
                (100, 15.0)
            ]
        );
    }

    #[test]
    fn study_hostgw_capture() {
        let r = parse(STUDY_HOSTGW).unwrap();
        assert_eq!(r.server_software.as_deref(), Some("nginx/1.11.1"));
        assert_eq!(r.requests_per_second, 10815.20);
        assert_eq!(r.mean_time_per_request_ms, 4.623);
        assert_eq!(
            r.connection_times.unwrap().total,
            TimeRow {
                min: 2.0,
                mean: 5.0,
                sd: 2.1,
                median: 4.0,
                max: 23.0
            }
        );
        assert_eq!(r.percentiles_ms.last(), Some(&(100, 23.0)));
    }

    #[test]
    fn loopback_capture() {
        let r = parse(LOOPBACK).unwrap();
        assert_eq!(r.server_software.as_deref(), Some("nginx/1.22.1"));
        assert_eq!((r.document_length_bytes, r.concurrency), (612, 20));
        assert_eq!((r.complete_requests, r.failed_requests), (2000, 0));
        assert_eq!(r.time_taken_s, 0.307);
        assert_eq!(r.requests_per_second, 6518.59);
        assert_eq!(r.mean_time_per_request_ms, 3.068);
        assert_eq!(r.mean_time_per_request_all_ms, 0.153);
        assert_eq!(r.transfer_rate_kbytes_s, 5379.11);
        assert_eq!(
            r.connection_times.unwrap().connect,
            TimeRow {
                min: 0.0,
                mean: 1.0,
                sd: 0.6,
                median: 0.0,
                max: 5.0
            }
        );
        assert_eq!(r.percentiles_ms.len(), 9);
        assert_eq!(r.percentiles_ms[0], (50, 2.0));
        assert_eq!(r.percentiles_ms[8], (100, 11.0));
    }

    #[test]
    fn failed_requests_with_breakdown_line() {
        let r = parse(LENGTH_FAILURES).unwrap();
        assert_eq!((r.complete_requests, r.failed_requests), (500, 482));
        assert_eq!(r.document_length_bytes, 2);
        assert_eq!(r.requests_per_second, 17675.96);
    }

    #[test]
    fn failures_may_outnumber_completions() {
        let r = parse(RST_KEEP_GOING).unwrap();
        assert_eq!((r.complete_requests, r.failed_requests), (20, 40));
        assert_eq!(r.server_software, None);
        assert_eq!(r.document_length_bytes, 0);
    }

    #[test]
    fn non_2xx_responses_are_counted() {
        let r = parse(NOT_FOUND).unwrap();
        assert_eq!((r.complete_requests, r.non_2xx_responses), (200, 200));
        assert_eq!(r.document_length_bytes, 153);
    }

    #[test]
    fn short_table_and_no_percentiles() {
        // ab -S -d: "min avg max" table, no percentile block.
        let r = parse(SHORT_TABLE).unwrap();
        assert_eq!(r.connection_times, None);
        assert!(r.percentiles_ms.is_empty());
        assert_eq!(r.requests_per_second, 9439.31);
    }

    #[test]
    fn fatal_ab_errors_are_reported() {
        for (text, expected) in [
            (RESET, "apr_socket_recv: Connection reset by peer (104)"),
            (REFUSED, "apr_socket_recv: Connection refused (111)"),
            (
                TIMEOUT,
                "apr_pollset_poll: The timeout specified has expired (70007)",
            ),
        ] {
            match parse(text) {
                Err(ParseError::ToolReported {
                    tool: "ab",
                    message,
                }) => assert_eq!(message, expected),
                other => panic!("expected ToolReported({expected}), got {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_before_requests_per_second() {
        let text = cut_before(LOOPBACK, "Requests per second");
        let err = parse(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ab output is truncated: no 'Requests per second' line (did ab crash or time out?)"
        );
        expect_truncated(
            &cut_before(STUDY_PHYSICAL, "Requests per second"),
            "'Requests per second' line",
        );
    }

    #[test]
    fn truncated_at_each_later_section() {
        expect_truncated(
            &cut_before(LOOPBACK, "Time per request"),
            "'Time per request: ... (mean)' line",
        );
        expect_truncated(
            &cut_before(LOOPBACK, "Transfer rate"),
            "'Transfer rate' line",
        );
        expect_truncated(
            &cut_before(LOOPBACK, "Connection Times"),
            "'Connection Times (ms)' table",
        );
        expect_truncated(
            &cut_before(LOOPBACK, "Waiting:"),
            "'Waiting:' row in the Connection Times table",
        );
        expect_truncated(
            &cut_before(STUDY_PHYSICAL, " 100%"),
            "'100%' row in the percentile table",
        );
        expect_truncated(
            &cut_before(LOOPBACK, "Complete requests"),
            "'Complete requests' line",
        );
    }

    #[test]
    fn only_the_banner_is_truncated() {
        expect_truncated(
            &cut_before(LOOPBACK, "Server Software"),
            "'Document Length' line",
        );
    }

    #[test]
    fn unparsable_numbers_are_malformed_with_line_numbers() {
        let text = LOOPBACK.replace("Complete requests:      2000", "Complete requests:      2k");
        match parse(&text) {
            Err(ParseError::Malformed { line, text, .. }) => {
                assert_eq!(line, 17);
                assert_eq!(text, "Complete requests:      2k");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        let text = STUDY_PHYSICAL.replace(
            "Processing:     1    3   1.7",
            "Processing:     1    3   x.7",
        );
        assert!(
            matches!(parse(&text), Err(ParseError::Malformed { line: 18, .. })),
            "{:?}",
            parse(&text)
        );
        let text = STUDY_PHYSICAL.replace(
            "Total:          1    4   1.7      3      15",
            "Total:          1    4",
        );
        assert!(
            matches!(parse(&text), Err(ParseError::Malformed { line: 20, .. })),
            "{:?}",
            parse(&text)
        );
        let text = STUDY_PHYSICAL.replace("  90%      5", "  90%      soon");
        assert!(
            matches!(parse(&text), Err(ParseError::Malformed { line: 29, .. })),
            "{:?}",
            parse(&text)
        );
        let text = STUDY_PHYSICAL.replace("612 bytes", "Variable");
        assert!(
            matches!(parse(&text), Err(ParseError::Malformed { line: 2, .. })),
            "{:?}",
            parse(&text)
        );
    }

    #[test]
    fn zero_completed_requests_measure_nothing() {
        let head = cut_before(LOOPBACK, "Requests per second")
            .replace("Complete requests:      2000", "Complete requests:      0");
        let err = parse(&head).unwrap_err();
        assert!(
            matches!(err, ParseError::NothingMeasured { tool: "ab", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn empty_and_garbage_are_errors() {
        assert!(matches!(
            parse("").unwrap_err(),
            ParseError::Empty { tool: "ab" }
        ));
        match parse(
            "PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.\n64 bytes from 127.0.0.1: icmp_seq=1",
        ) {
            Err(ParseError::Unrecognized { first_line, .. }) => {
                assert_eq!(
                    first_line,
                    "PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data."
                )
            }
            other => panic!("expected Unrecognized, got {other:?}"),
        }
    }

    #[test]
    fn round_trips_through_json() {
        let r = parse(STUDY_PHYSICAL).unwrap();
        let back: AbReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
