//! Running the external tools the lab and benchmarks are made of (`ip`, `iptables-restore`,
//! `ping`, ...), optionally inside a lab network namespace, with errors that name the command.

use std::process::{Command, Output, Stdio};

/// A failed external command, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("`{program}` is not installed: run `cargo xtask setup` (it installs the lab's Debian packages)")]
    NotInstalled { program: String },
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// One external command. `in_netns` prefixes it with `ip netns exec NS`.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: String,
    args: Vec<String>,
    netns: Option<String>,
    stdin: Option<String>,
}

impl Cmd {
    pub fn new(program: &str) -> Self {
        Self {
            program: program.to_owned(),
            args: Vec::new(),
            netns: None,
            stdin: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn in_netns(mut self, netns: &str) -> Self {
        self.netns = Some(netns.to_owned());
        self
    }

    /// Text fed to the command's standard input (e.g. an `iptables-restore` ruleset).
    pub fn stdin(mut self, text: String) -> Self {
        self.stdin = Some(text);
        self
    }

    /// The text given with [`Cmd::stdin`], if any.
    pub fn stdin_text(&self) -> Option<&str> {
        self.stdin.as_deref()
    }

    /// The command line as a user would type it, for messages.
    pub fn display(&self) -> String {
        let mut words = Vec::new();
        if let Some(ns) = &self.netns {
            words.extend(["ip", "netns", "exec", ns.as_str()]);
        }
        words.push(&self.program);
        words.extend(self.args.iter().map(String::as_str));
        words.join(" ")
    }

    /// A `std::process::Command` for this command line (the caller sets up stdio).
    pub fn to_std(&self) -> Command {
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        command.args(&self.args);
        // Its own process group: a terminal's Ctrl-C reaches netprof alone, which then stops
        // the tools and tears the lab down in order.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command
    }

    /// A tokio command for long-running tools; killed when dropped so Ctrl-C leaves nothing.
    pub fn to_tokio(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::from(self.to_std());
        command.kill_on_drop(true);
        command
    }

    /// Runs to completion; returns stdout, or an error carrying stderr.
    pub fn run(&self) -> Result<String, CmdError> {
        let output = self.output()?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(self.failed(&output))
        }
    }

    /// Runs to completion and returns the raw output whatever the exit status.
    pub fn output(&self) -> Result<Output, CmdError> {
        ensure_installed(&self.program)?;
        let mut command = self.to_std();
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = command.spawn().map_err(|source| CmdError::Spawn {
            command: self.display(),
            source,
        })?;
        if let Some(text) = &self.stdin {
            use std::io::Write;
            // A closed pipe shows up as the command's own failure below.
            if let Some(mut pipe) = child.stdin.take() {
                let _ = pipe.write_all(text.as_bytes());
            }
        }
        child.wait_with_output().map_err(|source| CmdError::Spawn {
            command: self.display(),
            source,
        })
    }

    pub fn failed(&self, output: &Output) -> CmdError {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let text = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        CmdError::Failed {
            command: self.display(),
            status: output.status.to_string(),
            stderr: last_lines(text.trim(), 3),
        }
    }
}

/// Fails with `NotInstalled` unless `program` is on PATH.
pub fn ensure_installed(program: &str) -> Result<(), CmdError> {
    which::which(program)
        .map(|_| ())
        .map_err(|_| CmdError::NotInstalled {
            program: program.to_owned(),
        })
}

/// Keeps an error message to one readable line or a few.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_the_netns_prefix() {
        let cmd = Cmd::new("ping").args(["-c", "3"]).in_netns("netprof-x");
        assert_eq!(cmd.display(), "ip netns exec netprof-x ping -c 3");
    }

    #[test]
    fn missing_program_says_how_to_install() {
        let err = Cmd::new("netprof-no-such-tool").run().unwrap_err();
        assert!(matches!(err, CmdError::NotInstalled { .. }));
        assert!(err.to_string().contains("cargo xtask setup"));
    }

    #[test]
    fn failure_carries_stderr() {
        let err = Cmd::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("boom") && text.contains("exit status: 3"),
            "{text}"
        );
    }
}
