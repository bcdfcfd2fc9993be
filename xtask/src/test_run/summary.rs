//! The closing summary: counts over every binary, skipped and failed tests by name, and the
//! binaries that died or whose lines disagree with libtest's own counts.

use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use anyhow::{bail, Result};

use super::libtest::{Run, Verdict};

/// One binary's tests and whatever went wrong with the binary itself.
#[derive(Debug)]
pub struct BinaryResult {
    pub label: String,
    pub runs: Vec<Run>,
    /// The binary died, exited badly after an ok run, or its output could not be matched.
    pub problems: Vec<String>,
}

impl BinaryResult {
    /// A binary that was not run because what it needs could not be made: a failure.
    pub fn failed_to_start(label: String, why: String) -> Self {
        Self {
            label,
            runs: Vec::new(),
            problems: vec![why],
        }
    }

    pub fn new(label: String, status: ExitStatus, runs: Vec<Run>, stray: Vec<String>) -> Self {
        let mut problems = Vec::new();
        if runs.is_empty() {
            problems.push(format!("printed no libtest run ({})", describe(status)));
        }
        for run in &runs {
            if run.summary.is_none() {
                let during = run
                    .tests
                    .iter()
                    .find(|t| t.verdict == Verdict::Crashed)
                    .map_or(String::new(), |t| format!(" while {} ran", t.name));
                problems.push(format!(
                    "died ({}){during} before libtest's `test result:`; {} announced tests never ran",
                    describe(status),
                    run.not_run()
                ));
            }
            for mismatch in &run.mismatches {
                problems.push(format!("runner could not match libtest: {mismatch}"));
            }
        }
        let finished = runs.iter().all(|r| r.summary.is_some());
        let libtest_ok = runs.iter().all(|r| r.summary.is_some_and(|s| s.ok));
        if finished && libtest_ok && !status.success() {
            problems.push(format!(
                "exited with {} after libtest reported ok",
                describe(status)
            ));
        }
        for marker in stray {
            problems.push(format!("skip marker printed outside any test: {marker}"));
        }
        Self {
            label,
            runs,
            problems,
        }
    }
}

/// An exit status in words: `exit code 101`, `signal 6 (SIGABRT)`.
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(signal) => {
            let name = match signal {
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                8 => " (SIGFPE)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("signal {signal}{name}")
        }
        None => format!("{status}"),
    }
}

/// Counts over all binaries, with the names behind the skips and failures.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub binaries: usize,
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub ignored: u64,
    pub not_run: u64,
    /// `binary: test: reason`.
    pub skipped_tests: Vec<String>,
    /// `binary: test (how)`.
    pub failed_tests: Vec<String>,
    /// `binary: problem`.
    pub problems: Vec<String>,
}

impl Totals {
    pub fn of(results: &[BinaryResult]) -> Self {
        let mut totals = Totals {
            binaries: results.len(),
            ..Totals::default()
        };
        for result in results {
            for run in &result.runs {
                totals.not_run += run.not_run();
                for test in &run.tests {
                    let at = format!("{}: {}", result.label, test.name);
                    match &test.verdict {
                        Verdict::Passed => totals.passed += 1,
                        Verdict::Ignored => totals.ignored += 1,
                        Verdict::Skipped { reason } => {
                            totals.skipped += 1;
                            totals.skipped_tests.push(format!("{at}: {reason}"));
                        }
                        failed => {
                            totals.failed += 1;
                            let how = match failed {
                                Verdict::Crashed => " (the binary died while it ran)",
                                Verdict::Unread { .. } => " (verdict unreadable, binary died)",
                                _ => "",
                            };
                            totals.failed_tests.push(format!("{at}{how}"));
                        }
                    }
                }
            }
            for problem in &result.problems {
                totals.problems.push(format!("{}: {problem}", result.label));
            }
        }
        totals
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "\ntests: {} passed, {} failed, {} skipped, {} ignored, {} not run ({} test binaries)\n",
            self.passed, self.failed, self.skipped, self.ignored, self.not_run, self.binaries
        );
        for (title, lines) in [
            ("skipped", &self.skipped_tests),
            ("failed", &self.failed_tests),
            ("binaries that failed outside a test", &self.problems),
        ] {
            if !lines.is_empty() {
                let _ = writeln!(out, "{title} ({}):", lines.len());
                for line in lines {
                    let _ = writeln!(out, "  {line}");
                }
            }
        }
        out
    }

    /// An error unless every test that ran passed (or was skipped or ignored) and every
    /// binary finished cleanly.
    pub fn verdict(&self) -> Result<()> {
        if self.failed > 0 || !self.problems.is_empty() {
            bail!(
                "{} failed tests, {} binary problems (listed above)",
                self.failed,
                self.problems.len()
            );
        }
        if self.passed + self.skipped == 0 {
            bail!("no test ran: check the test name filter");
        }
        Ok(())
    }
}
