//! The counter on outputs captured from real libtest binaries (`xtask/fixtures/libtest/`:
//! one test of each kind, run to the end and run into a crash) and on the edge cases around
//! them.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::libtest::{Parser, Run, Summary, TestOutcome, Verdict};
use super::summary::{BinaryResult, Totals};

const FINISHED: &str = include_str!("../../fixtures/libtest/finished.stdout");
const CRASHED: &str = include_str!("../../fixtures/libtest/crash.stdout");

fn parse(output: &str) -> (Vec<Run>, Vec<String>) {
    let mut parser = Parser::default();
    for line in output.lines() {
        parser.line(line);
    }
    parser.finish()
}

fn verdicts(run: &Run) -> Vec<(&str, Verdict)> {
    run.tests
        .iter()
        .map(|t| (t.name.as_str(), t.verdict.clone()))
        .collect()
}

fn skip(reason: &str) -> Verdict {
    Verdict::Skipped {
        reason: reason.to_owned(),
    }
}

const KERNEL_SKIP: &str = "injected skip (kernel 6.18.44-fc-v782)";

#[test]
fn a_finished_run_is_read_test_for_test_as_libtest_counts_it() {
    let (runs, stray) = parse(FINISHED);
    assert!(stray.is_empty());
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(
        verdicts(run),
        [
            ("a_fails", Verdict::Failed),
            ("b_ignored", Verdict::Ignored),
            // The marker landed mid-line, right after libtest's header.
            ("c_skipped", skip(KERNEL_SKIP)),
            // `partial lineok`: settled by the failures list (not listed: passed).
            ("d_passes_with_output_without_newline", Verdict::Passed),
            // `status ok` is output; the verdict is the next line.
            ("e_passes", Verdict::Passed),
        ]
    );
    assert_eq!(
        run.summary,
        Some(Summary {
            ok: false,
            passed: 3,
            failed: 1,
            ignored: 1,
            filtered_out: 1,
        })
    );
    assert!(run.mismatches.is_empty(), "{:?}", run.mismatches);
    assert_eq!(run.not_run(), 0);
}

#[test]
fn a_crash_fails_the_running_test_and_keeps_what_libtest_printed_before() {
    let (runs, _) = parse(CRASHED);
    let run = &runs[0];
    assert_eq!(run.summary, None);
    assert_eq!(
        verdicts(run),
        [
            ("a_fails", Verdict::Failed),
            ("b_ignored", Verdict::Ignored),
            ("c_skipped", skip(KERNEL_SKIP)),
            // No failures list will come: the glued `ok` is what libtest said.
            ("d_passes_with_output_without_newline", Verdict::Passed),
            ("e_passes", Verdict::Passed),
            ("z_crashes", Verdict::Crashed),
        ]
    );
    let result = BinaryResult::new(
        "injected (test netprof-tests)".into(),
        ExitStatus::from_raw(6),
        runs,
        Vec::new(),
    );
    assert_eq!(
        result.problems,
        [
            "died (signal 6 (SIGABRT)) while z_crashes ran before libtest's `test result:`; \
          0 announced tests never ran"
        ]
    );
    let totals = Totals::of(&[result]);
    assert_eq!(
        (totals.passed, totals.failed, totals.skipped, totals.ignored),
        (2, 2, 1, 1)
    );
    assert_eq!(
        totals.failed_tests,
        [
            "injected (test netprof-tests): a_fails",
            "injected (test netprof-tests): z_crashes (the binary died while it ran)",
        ]
    );
    assert_eq!(
        totals.skipped_tests,
        [format!(
            "injected (test netprof-tests): c_skipped: {KERNEL_SKIP}"
        )]
    );
    assert!(totals.verdict().is_err());
}

#[test]
fn tests_after_a_crash_are_counted_as_not_run() {
    let output = "running 3 tests\ntest a ... ok\ntest b ... ";
    let (runs, _) = parse(output);
    assert_eq!(
        verdicts(&runs[0]),
        [("a", Verdict::Passed), ("b", Verdict::Crashed)]
    );
    assert_eq!(runs[0].not_run(), 1);
    let totals = Totals::of(&[BinaryResult::new(
        "x".into(),
        ExitStatus::from_raw(9),
        runs,
        Vec::new(),
    )]);
    assert_eq!((totals.passed, totals.failed, totals.not_run), (1, 1, 1));
    assert!(totals.render().contains("1 not run"));
}

#[test]
fn a_skip_is_counted_instead_of_a_pass_wherever_the_marker_lands() {
    let output = "\nrunning 3 tests\n\
        test one ... NETPROF-SKIP one: no BTF\nok\n\
        test two ... setting up\nsome text NETPROF-SKIP two: no tool\nok\n\
        test three ... NETPROF-SKIP three: then it failed\nFAILED\n\n\
        failures:\n\nfailures:\n    three\n\n\
        test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s\n";
    let (runs, stray) = parse(output);
    assert!(stray.is_empty());
    assert_eq!(
        verdicts(&runs[0]),
        [
            ("one", skip("no BTF")),
            ("two", skip("no tool")),
            ("three", Verdict::Failed),
        ]
    );
    assert!(runs[0].mismatches.is_empty(), "{:?}", runs[0].mismatches);
    let totals = Totals::of(&[BinaryResult::new(
        "b".into(),
        ExitStatus::from_raw(101 << 8),
        runs,
        Vec::new(),
    )]);
    assert_eq!((totals.passed, totals.skipped, totals.failed), (0, 2, 1));
    assert_eq!(totals.skipped_tests, ["b: one: no BTF", "b: two: no tool"]);
}

#[test]
fn a_glued_failure_is_settled_by_libtests_failures_list() {
    let output = "running 2 tests\ntest a ... no newlineFAILED\ntest b ... ok\n\n\
        failures:\n\nfailures:\n    a\n\n\
        test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0s\n";
    let (runs, _) = parse(output);
    assert_eq!(
        verdicts(&runs[0]),
        [("a", Verdict::Failed), ("b", Verdict::Passed)]
    );
    assert!(runs[0].mismatches.is_empty());
}

#[test]
fn lines_that_disagree_with_libtests_counts_are_reported() {
    let output = "running 2 tests\ntest a ... ok\ntest b ... ok\n\
        test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0s\n";
    let (runs, _) = parse(output);
    assert_eq!(
        runs[0].mismatches,
        ["2 passed read test by test, libtest counts 3"]
    );
    let result = BinaryResult::new("m".into(), ExitStatus::from_raw(0), runs, Vec::new());
    assert_eq!(result.problems.len(), 1);
    assert!(Totals::of(&[result]).verdict().is_err());
}

#[test]
fn a_bad_exit_after_an_ok_run_and_a_stray_marker_fail_the_binary() {
    let output = "NETPROF-SKIP nobody: before any test\nrunning 1 test\ntest a ... ok\n\n\
        test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0s\n";
    let (runs, stray) = parse(output);
    assert_eq!(stray, ["nobody: before any test"]);
    let result = BinaryResult::new("e".into(), ExitStatus::from_raw(1 << 8), runs, stray);
    assert_eq!(
        result.problems,
        [
            "exited with exit code 1 after libtest reported ok",
            "skip marker printed outside any test: nobody: before any test",
        ]
    );
}

#[test]
fn several_runs_in_one_output_are_kept_apart() {
    // `cargo test --doc` prints one run per crate; a doc test's name has spaces.
    let output = "running 1 test\ntest src/lib.rs - f (line 3) ... ok\n\n\
        test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0s\n\n\
        running 0 tests\n\n\
        test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0s\n";
    let (runs, _) = parse(output);
    assert_eq!(runs.len(), 2);
    assert_eq!(
        runs[0].tests,
        [TestOutcome {
            name: "src/lib.rs - f (line 3)".into(),
            verdict: Verdict::Passed,
        }]
    );
    assert!(runs[1].tests.is_empty() && runs[1].summary.is_some());
    let totals = Totals::of(&[BinaryResult::new(
        "doc tests".into(),
        ExitStatus::from_raw(0),
        runs,
        Vec::new(),
    )]);
    assert_eq!(totals.passed, 1);
    assert!(totals.verdict().is_ok());
}
