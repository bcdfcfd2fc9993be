//! Parsers for the text and JSON that the benchmark tools print.
//!
//! Each parser takes the tool's captured output and either returns a typed report or a
//! [`ParseError`] that says in one line what went wrong and what to check. None of them
//! panics on bad input: the output comes from other processes and may be cut off, mixed with
//! error messages, or not be the tool's output at all.

/// A captured tool output under `tests/fixtures/<dir>/<name>`, compiled into the unit tests.
#[cfg(test)]
macro_rules! fixture {
    ($dir:literal, $name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/",
            $dir,
            "/",
            $name
        ))
    };
}

pub mod ab;
pub mod iperf3;
pub mod ping;

/// Why a tool's output could not be turned into a report.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{tool} output is empty (did {tool} run at all, and was its stdout captured?)")]
    Empty { tool: &'static str },

    #[error("{tool} output not recognised, first line is {first_line:?} (was another tool run, or only stderr captured?)")]
    Unrecognized {
        tool: &'static str,
        first_line: String,
    },

    #[error("{tool} output is truncated: no {missing} (did {tool} crash or time out?)")]
    Truncated {
        tool: &'static str,
        missing: &'static str,
    },

    #[error("{tool} output line {line} is malformed ({reason}): {text:?}")]
    Malformed {
        tool: &'static str,
        line: usize,
        text: String,
        reason: &'static str,
    },

    #[error("{tool} reported an error: {message}")]
    ToolReported { tool: &'static str, message: String },

    #[error("{tool} output is inconsistent: its summary reports {reported} {what} but {found} were found (were two runs mixed, or was a quiet mode used?)")]
    Inconsistent {
        tool: &'static str,
        what: &'static str,
        reported: u64,
        found: u64,
    },

    #[error("{tool} measured nothing: {reason}")]
    NothingMeasured {
        tool: &'static str,
        reason: &'static str,
    },

    #[error("{tool} JSON output is not what netprof expects: {source} (unsupported {tool} version, or stderr mixed into stdout?)")]
    Json {
        tool: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// The first non-blank line, shortened, for [`ParseError::Unrecognized`]: enough to tell what
/// was captured without dumping a whole file into a log line.
fn first_line_excerpt(output: &str) -> String {
    const MAX_CHARS: usize = 80;
    let line = output
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars().take(MAX_CHARS).collect()
}

/// Parses the first whitespace-separated token of `value`, reporting `line` (1-based) on failure.
fn first_token<T: std::str::FromStr>(
    tool: &'static str,
    line: usize,
    text: &str,
    value: &str,
    reason: &'static str,
) -> Result<T, ParseError> {
    value
        .split_whitespace()
        .next()
        .and_then(|token| token.parse().ok())
        .ok_or_else(|| ParseError::Malformed {
            tool,
            line,
            text: text.to_string(),
            reason,
        })
}

/// Like [`first_token`] for floats, but also rejects NaN and infinities: tools never print them
/// for a real measurement, and they would poison every statistic computed downstream.
fn first_finite(
    tool: &'static str,
    line: usize,
    text: &str,
    value: &str,
    reason: &'static str,
) -> Result<f64, ParseError> {
    let number: f64 = first_token(tool, line, text, value, reason)?;
    if number.is_finite() {
        Ok(number)
    } else {
        Err(ParseError::Malformed {
            tool,
            line,
            text: text.to_string(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_single_actionable_lines() {
        let errors = [
            ParseError::Empty { tool: "ping" },
            ParseError::Truncated {
                tool: "ab",
                missing: "'Requests per second' line",
            },
            ParseError::Malformed {
                tool: "ab",
                line: 7,
                text: "x".into(),
                reason: "expected a number",
            },
            ParseError::ToolReported {
                tool: "iperf3",
                message: "unable to connect".into(),
            },
        ];
        for e in &errors {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line message: {msg}");
        }
        assert_eq!(
            errors[1].to_string(),
            "ab output is truncated: no 'Requests per second' line (did ab crash or time out?)"
        );
    }

    #[test]
    fn first_token_reports_line_and_rejects_garbage() {
        assert_eq!(
            first_token::<u64>("ab", 3, "t", " 42 bytes", "n").unwrap(),
            42
        );
        let err = first_token::<u64>("ab", 3, "Complete requests: lots", "lots", "n").unwrap_err();
        assert!(
            matches!(err, ParseError::Malformed { line: 3, .. }),
            "{err:?}"
        );
        let err = first_finite("ab", 4, "t", "NaN", "n").unwrap_err();
        assert!(
            matches!(err, ParseError::Malformed { line: 4, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn excerpt_skips_blank_lines_and_is_bounded() {
        assert_eq!(
            first_line_excerpt("\n  \n hello world \nmore"),
            "hello world"
        );
        assert_eq!(first_line_excerpt(&"y".repeat(500)).len(), 80);
    }
}
