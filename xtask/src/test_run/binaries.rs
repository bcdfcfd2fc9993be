//! The test executables `cargo test` would run, built and named by cargo itself
//! (`cargo test --no-run --message-format=json`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::run::{cargo, workspace_root};

/// One libtest executable: a crate's unit tests, a binary's, or an integration test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestBinary {
    pub package: String,
    pub package_dir: PathBuf,
    /// The target's kind (`lib`, `bin`, `test`) and name.
    pub kind: String,
    pub name: String,
    pub executable: PathBuf,
}

impl TestBinary {
    pub fn label(&self) -> String {
        match self.kind.as_str() {
            "test" => format!("{} (test {})", self.name, self.package),
            kind => format!("{} ({kind} unit tests)", self.name),
        }
    }
}

/// Builds the test targets `cargo_args` select and lists their executables, in cargo's order
/// of running them: unit tests (lib, then bins), then integration tests, by name.
pub fn build(cargo_args: &[String]) -> Result<Vec<TestBinary>> {
    let mut command = cargo();
    command
        .args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args(cargo_args)
        .current_dir(workspace_root())
        .stdout(Stdio::piped());
    let output = command
        .spawn()
        .and_then(|child| child.wait_with_output())
        .context("cannot run cargo test --no-run")?;
    if !output.status.success() {
        bail!(
            "building the tests failed ({}): the errors are above",
            output.status
        );
    }
    let mut binaries = parse_messages(&String::from_utf8_lossy(&output.stdout))?;
    let rank = |b: &TestBinary| match b.kind.as_str() {
        "lib" => 0,
        "bin" => 1,
        _ => 2,
    };
    binaries.sort_by(|a, b| {
        (a.package.as_str(), rank(a), a.name.as_str()).cmp(&(
            b.package.as_str(),
            rank(b),
            b.name.as_str(),
        ))
    });
    if binaries.is_empty() {
        bail!("cargo built no test executable for {cargo_args:?}");
    }
    Ok(binaries)
}

/// The test executables among cargo's JSON messages (`compiler-artifact` with an
/// `executable` and a test profile).
fn parse_messages(messages: &str) -> Result<Vec<TestBinary>> {
    let mut binaries = Vec::new();
    for line in messages.lines().filter(|l| l.starts_with('{')) {
        let message: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("cargo message: {line}"))?;
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let text = |value: &serde_json::Value, what: &str| {
            value
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no {what} in cargo message: {line}"))
        };
        let manifest = text(&message["manifest_path"], "manifest_path")?;
        let package_dir = Path::new(&manifest)
            .parent()
            .with_context(|| format!("manifest path {manifest} has no directory"))?
            .to_owned();
        binaries.push(TestBinary {
            package: package_name(&text(&message["package_id"], "package_id")?),
            package_dir,
            kind: text(&message["target"]["kind"][0], "target kind")?,
            name: text(&message["target"]["name"], "target name")?,
            executable: PathBuf::from(executable),
        });
    }
    Ok(binaries)
}

/// The package's name from a package id: `path+file:///dir/tests#netprof-tests@0.1.0`,
/// `path+file:///dir/xtask#0.1.0` (the name is the directory's when they agree), or the older
/// `netprof-tests 0.1.0 (path+file:///dir/tests)`.
fn package_name(id: &str) -> String {
    let Some((url, fragment)) = id.rsplit_once('#') else {
        return id.split(' ').next().unwrap_or(id).to_owned();
    };
    match fragment.split_once('@') {
        Some((name, _)) => name.to_owned(),
        None => url.rsplit('/').next().unwrap_or(url).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_executables_are_read_from_cargos_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#netprof-tests@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"name":"agent_lab"},"profile":{"test":true},"executable":"/w/target/debug/deps/agent_lab-1"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/profiler#netprof@0.1.0","manifest_path":"/w/profiler/Cargo.toml","target":{"kind":["lib"],"name":"netprof"},"profile":{"test":false},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","package_id":"netprof 0.1.0 (path+file:///w/profiler)","manifest_path":"/w/profiler/Cargo.toml","target":{"kind":["lib"],"name":"netprof"},"profile":{"test":true},"executable":"/w/target/debug/deps/netprof-2"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/xtask#0.1.0","manifest_path":"/w/xtask/Cargo.toml","target":{"kind":["bin"],"name":"xtask"},"profile":{"test":true},"executable":"/w/target/debug/deps/xtask-3"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        let binaries = parse_messages(messages).unwrap();
        assert_eq!(
            binaries,
            [
                TestBinary {
                    package: "netprof-tests".into(),
                    package_dir: "/w/tests".into(),
                    kind: "test".into(),
                    name: "agent_lab".into(),
                    executable: "/w/target/debug/deps/agent_lab-1".into(),
                },
                TestBinary {
                    package: "netprof".into(),
                    package_dir: "/w/profiler".into(),
                    kind: "lib".into(),
                    name: "netprof".into(),
                    executable: "/w/target/debug/deps/netprof-2".into(),
                },
                TestBinary {
                    package: "xtask".into(),
                    package_dir: "/w/xtask".into(),
                    kind: "bin".into(),
                    name: "xtask".into(),
                    executable: "/w/target/debug/deps/xtask-3".into(),
                },
            ]
        );
    }
}
