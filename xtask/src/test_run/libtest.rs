//! Reads what a libtest binary prints with `--test-threads=1 --nocapture` (stable Rust's
//! "pretty" format) and says, test by test, what happened.
//!
//! The format: `running N tests`, then per test `test NAME ... ` (no newline), whatever the
//! test prints, and the verdict `ok`, `FAILED`, `ignored` or `ignored, REASON` with a newline;
//! at the end `failures:` with the failed names indented, and `test result: ...`. A test's
//! output lands between its header and its verdict, so a verdict is only taken from a line
//! that is nothing else (or the rest of the header line); a test whose output did not end in a
//! newline glues its verdict to that output, and is then resolved from the `failures:` list,
//! checked against the `test result:` counts. A skip is counted only from the structured
//! marker (see [`SKIP_MARKER`]), wherever it lands in a line, for the test running then.
//!
//! Why not libtest's JSON: it needs `-Z unstable-options` (nightly, or RUSTC_BOOTSTRAP on
//! stable), and with `--nocapture` the tests' own output interleaves with it just the same.

/// What a test prints to say it cannot run here: `NETPROF-SKIP <test>: <reason>`, from
/// `netprof::testing::print_skip` (xtask does not depend on netprof: keep the two in step).
pub const SKIP_MARKER: &str = "NETPROF-SKIP ";

/// How one test ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed,
    Ignored,
    /// Passed after printing the skip marker: it could not run here.
    Skipped {
        reason: String,
    },
    /// Its binary died while it ran (no verdict, no `test result:` line).
    Crashed,
    /// Its verdict was glued to output without a newline, could not be read from that
    /// output either, and the binary died before libtest's failures list could settle it.
    /// `skip`: the reason, if it printed the skip marker.
    Unread {
        skip: Option<String>,
    },
}

/// One test and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    pub name: String,
    pub verdict: Verdict,
}

/// libtest's own `test result:` counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub ok: bool,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub filtered_out: u64,
}

/// One libtest run (one binary; `cargo test --doc` prints one per crate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Run {
    /// `running N tests`.
    pub announced: u64,
    pub tests: Vec<TestOutcome>,
    /// `None`: the run never finished (the binary died).
    pub summary: Option<Summary>,
    /// Where the per-test lines and libtest's summary disagree (a runner problem, reported).
    pub mismatches: Vec<String>,
}

impl Run {
    /// Tests announced but never started (the binary died before them).
    pub fn not_run(&self) -> u64 {
        self.announced.saturating_sub(self.tests.len() as u64)
    }
}

/// The test between its header and its verdict.
#[derive(Debug, Default)]
struct Open {
    name: String,
    skip: Option<String>,
    /// The last text it printed, where a verdict glued to output without a newline ends.
    last_text: String,
}

/// Reads a libtest binary's stdout line by line.
#[derive(Debug, Default)]
pub struct Parser {
    runs: Vec<Run>,
    open: Option<Open>,
    /// Names under the latest `failures:` line; libtest's own list is the last one before
    /// `test result:` (a test printing `failures:` itself is overwritten by it).
    listed_failed: Vec<String>,
    in_failures: bool,
    /// Skip markers printed outside any test.
    stray_skips: Vec<String>,
    /// For tests of the current run whose verdict was not read whole: the verdict their last
    /// text ends with (`...textok`). Used only if the run never reaches `test result:`;
    /// otherwise libtest's failures list settles them.
    glued: Vec<(usize, Verdict)>,
}

impl Parser {
    pub fn line(&mut self, line: &str) {
        let line = line.trim_end_matches('\r');
        if let Some(count) = line.strip_prefix("running ").and_then(announced_count) {
            self.finish_run(None);
            self.runs.push(Run {
                announced: count,
                ..Run::default()
            });
            return;
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            self.finish_run(parse_summary(rest));
            return;
        }
        if let Some((name, rest)) = header(line) {
            self.close_open(Verdict::Unread { skip: None });
            self.in_failures = false;
            self.open = Some(Open {
                name: name.to_owned(),
                ..Open::default()
            });
            self.body(rest);
            return;
        }
        if line == "failures:" {
            self.in_failures = true;
            self.listed_failed.clear();
        } else if self.in_failures {
            match line.strip_prefix("    ") {
                Some(name) => self.listed_failed.push(name.trim().to_owned()),
                None if line.is_empty() => {}
                None => self.in_failures = false,
            }
        }
        self.body(line);
    }

    /// Text printed while a test may be running: a skip marker, a verdict, or output.
    fn body(&mut self, text: &str) {
        if let Some(at) = text.find(SKIP_MARKER) {
            let marker = text[at + SKIP_MARKER.len()..].trim();
            match self.open.as_mut() {
                Some(open) => {
                    let reason = marker.split_once(": ").map_or(marker, |(_, r)| r);
                    open.skip = Some(reason.to_owned());
                }
                None => self.stray_skips.push(marker.to_owned()),
            }
            return;
        }
        if let Some(open) = self.open.as_mut() {
            match exact_verdict(text) {
                Some(verdict) => self.close_open(verdict),
                None if !text.trim().is_empty() => open.last_text = text.to_owned(),
                None => {}
            }
        }
    }

    /// Ends the open test with `verdict`; a passed test that printed the marker is skipped.
    fn close_open(&mut self, verdict: Verdict) {
        let Some(open) = self.open.take() else {
            return;
        };
        let verdict = with_skip(verdict, &open.skip);
        if self.runs.is_empty() {
            self.runs.push(Run::default());
        }
        let run = self.runs.last_mut().expect("a run");
        if matches!(verdict, Verdict::Unread { .. }) {
            if let Some(glued) = glued_verdict(&open.last_text) {
                self.glued
                    .push((run.tests.len(), with_skip(glued, &open.skip)));
            }
        }
        run.tests.push(TestOutcome {
            name: open.name,
            verdict,
        });
    }

    /// Closes the current run at `test result:` (`summary`) or where output ends or a new
    /// run starts without one (`None`: the binary died, and the open test with it).
    fn finish_run(&mut self, summary: Option<Summary>) {
        match summary {
            Some(_) => self.close_open(Verdict::Unread { skip: None }),
            None => self.close_open(Verdict::Crashed),
        }
        let listed = std::mem::take(&mut self.listed_failed);
        let glued = std::mem::take(&mut self.glued);
        self.in_failures = false;
        let Some(run) = self.runs.last_mut() else {
            return;
        };
        if run.summary.is_some() {
            return;
        }
        if summary.is_none() {
            // No failures list will come: the glued verdicts are all libtest said.
            for (index, verdict) in glued {
                run.tests[index].verdict = verdict;
            }
            return;
        }
        run.summary = summary;
        reconcile(run, &listed);
    }

    /// The runs read, and skip markers printed outside any test.
    pub fn finish(mut self) -> (Vec<Run>, Vec<String>) {
        self.finish_run(None);
        (self.runs, self.stray_skips)
    }
}

/// A passed test that printed the skip marker was skipped; an unread one keeps the reason.
fn with_skip(verdict: Verdict, skip: &Option<String>) -> Verdict {
    match (verdict, skip) {
        (Verdict::Passed, Some(reason)) => Verdict::Skipped {
            reason: reason.clone(),
        },
        (Verdict::Unread { .. }, skip) => Verdict::Unread { skip: skip.clone() },
        (verdict, _) => verdict,
    }
}

/// The verdict at the end of output that had no newline (`partial lineok`).
fn glued_verdict(text: &str) -> Option<Verdict> {
    let text = text.trim_end();
    if text.ends_with("FAILED") {
        Some(Verdict::Failed)
    } else if text.ends_with("ok") {
        Some(Verdict::Passed)
    } else {
        None
    }
}

/// `N tests` / `1 test` after `running `.
fn announced_count(rest: &str) -> Option<u64> {
    let (count, word) = rest.split_once(' ')?;
    matches!(word, "test" | "tests")
        .then(|| count.parse().ok())
        .flatten()
}

/// `test NAME ... REST` -> (NAME, REST). Doc-test names contain spaces, never ` ... `.
fn header(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("test ")?;
    let (name, after) = rest.split_once(" ... ")?;
    (!name.is_empty()).then_some((name, after))
}

/// A whole verdict: the text is nothing but `ok`, `FAILED`, `ignored` or `ignored, REASON`.
fn exact_verdict(text: &str) -> Option<Verdict> {
    match text.trim_end() {
        "ok" => Some(Verdict::Passed),
        "FAILED" => Some(Verdict::Failed),
        "ignored" => Some(Verdict::Ignored),
        t if t.starts_with("ignored, ") => Some(Verdict::Ignored),
        _ => None,
    }
}

/// `ok. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s`.
fn parse_summary(rest: &str) -> Option<Summary> {
    let (status, counts) = rest.split_once(". ")?;
    let mut summary = Summary {
        ok: status == "ok",
        ..Summary::default()
    };
    for part in counts.split(';') {
        let part = part.trim();
        let Some((count, what)) = part.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        match what {
            "passed" => summary.passed = count,
            "failed" => summary.failed = count,
            "ignored" => summary.ignored = count,
            "filtered out" => summary.filtered_out = count,
            _ => {}
        }
    }
    Some(summary)
}

/// Settles the tests whose verdict line was not read whole (glued to output without a
/// newline) from libtest's failures list, then records every disagreement between the
/// per-test verdicts and libtest's own counts.
fn reconcile(run: &mut Run, listed_failed: &[String]) {
    for test in &mut run.tests {
        let listed = listed_failed.contains(&test.name);
        match &test.verdict {
            Verdict::Unread { .. } if listed => test.verdict = Verdict::Failed,
            Verdict::Unread { skip } => test.verdict = with_skip(Verdict::Passed, skip),
            Verdict::Passed | Verdict::Skipped { .. } | Verdict::Ignored if listed => {
                run.mismatches.push(format!(
                    "{} read as {:?} but listed under failures:",
                    test.name, test.verdict
                ));
                test.verdict = Verdict::Failed;
            }
            _ => {}
        }
    }
    let count =
        |pick: fn(&Verdict) -> bool| run.tests.iter().filter(|t| pick(&t.verdict)).count() as u64;
    let passed = count(|v| matches!(v, Verdict::Passed | Verdict::Skipped { .. }));
    let failed = count(|v| matches!(v, Verdict::Failed));
    let ignored = count(|v| matches!(v, Verdict::Ignored));
    let summary = run.summary.expect("reconciled with a summary");
    for (what, ours, theirs) in [
        ("passed", passed, summary.passed),
        ("failed", failed, summary.failed),
        ("ignored", ignored, summary.ignored),
    ] {
        if ours != theirs {
            run.mismatches.push(format!(
                "{ours} {what} read test by test, libtest counts {theirs}"
            ));
        }
    }
    if run.tests.len() as u64 != run.announced {
        run.mismatches.push(format!(
            "{} tests read, libtest announced {}",
            run.tests.len(),
            run.announced
        ));
    }
}
