//! Progress lines on stderr (stdout stays for the table), one per phase of a run.

use std::io::Write as _;
use std::time::Instant;

/// An open progress line: `k8s: <what> ... <outcome> (<seconds>)`.
pub struct Step {
    started: Instant,
}

pub fn step(text: &str) -> Step {
    eprint!("k8s: {text} ... ");
    let _ = std::io::stderr().flush();
    Step {
        started: Instant::now(),
    }
}

impl Step {
    pub fn done(&self, text: &str) {
        eprintln!("{text} ({:.1} s)", self.started.elapsed().as_secs_f64());
    }

    /// Ends the line so the error message starts on its own.
    pub fn failed<E>(&self, err: E) -> E {
        eprintln!("failed");
        err
    }
}

/// A line of its own.
pub fn note(text: &str) {
    eprintln!("k8s: {text}");
}

/// A problem the run continues after, on its own line even inside an open step.
pub fn warn(text: &str) {
    eprintln!("\nk8s: warning: {text}");
}
