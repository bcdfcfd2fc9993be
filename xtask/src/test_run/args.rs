//! `cargo xtask test [CARGO_TEST_OPTIONS] [TESTNAME] [-- TEST_BINARY_ARGS]`, split the way
//! `cargo test` splits them: options (and their values) select what cargo builds, the rest
//! goes to every test binary.

use anyhow::{bail, Result};

/// `cargo test` options that take the next argument as their value, so that value is not
/// read as a test name filter.
const VALUE_OPTIONS: &[&str] = &[
    "-p",
    "--package",
    "--exclude",
    "--lib-name",
    "--bin",
    "--test",
    "--example",
    "--bench",
    "-F",
    "--features",
    "--target",
    "--target-dir",
    "--profile",
    "--manifest-path",
    "--lockfile-path",
    "-j",
    "--jobs",
    "--color",
    "--config",
    "-Z",
];

/// Options the runner sets itself or that change what it reads.
const REFUSED: &[&str] = &["--message-format", "--no-run", "--doc", "-q", "--quiet"];

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// For `cargo test --no-run`: which packages and targets.
    pub cargo: Vec<String>,
    /// For every test binary: name filters, `--ignored`, `--exact`, ...
    pub test: Vec<String>,
}

impl Args {
    /// Doc tests run with a full run only (cargo's target options do not select them).
    pub fn runs_doc_tests(&self) -> bool {
        self.cargo.is_empty() && self.test.is_empty()
    }
}

pub fn split(args: &[String]) -> Result<Args> {
    let mut out = Args::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            out.test.extend(iter.cloned());
            break;
        }
        let option = arg.split('=').next().unwrap_or(arg);
        if REFUSED.contains(&option) {
            bail!("`cargo xtask test` sets {option} itself or cannot read its output: leave it out (run `cargo test` directly for it)");
        }
        if !arg.starts_with('-') {
            out.test.push(arg.clone());
            continue;
        }
        out.cargo.push(arg.clone());
        if VALUE_OPTIONS.contains(&arg.as_str()) {
            match iter.next() {
                Some(value) => out.cargo.push(value.clone()),
                None => bail!("{arg} needs a value"),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_str(args: &[&str]) -> Args {
        split(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn options_go_to_cargo_and_filters_to_the_binaries() {
        let args = split_str(&["--test", "agent_lab", "flannel", "--", "--exact", "x"]);
        assert_eq!(args.cargo, ["--test", "agent_lab"]);
        assert_eq!(args.test, ["flannel", "--exact", "x"]);
        assert!(!args.runs_doc_tests());
        let args = split_str(&["-p=netprof", "--lib"]);
        assert_eq!(args.cargo, ["-p=netprof", "--lib"]);
        assert!(args.test.is_empty());
        assert!(split_str(&[]).runs_doc_tests());
    }

    #[test]
    fn options_the_runner_owns_are_refused_and_values_required() {
        for bad in [&["--message-format=json"][..], &["--no-run"], &["--test"]] {
            let args: Vec<String> = bad.iter().map(|a| a.to_string()).collect();
            assert!(split(&args).is_err(), "{bad:?}");
        }
    }
}
