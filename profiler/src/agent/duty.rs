//! Duty-cycled profiling: the agent attaches its programs for `on` out of every `period` and
//! detaches them in between, so the datapath pays for them only in those windows.
//!
//! Why detach rather than keep the programs and have them return early: a netfilter or tc
//! program that does nothing still costs its call on every packet (the hook's dispatch, which
//! is most of what an untracked packet pays), so only an absent program is free. Programs and maps stay loaded; each window bumps `Config::epoch` so
//! journeys left from the previous window are forgotten instead of counted as abandoned.
//!
//! The stage distributions are those of the windows (unbiased when the traffic is steady, as a
//! benchmark's is); counts cover only the windows, so the report scales per-event sums by the
//! share of time the agent was attached (`AgentReport::attached_s / elapsed_s`).

use std::{
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// When the programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duty {
    /// Attached for this long...
    pub on: Duration,
    /// ...at the start of every period.
    pub period: Duration,
}

/// The default period: short enough that a 2 s ping step still sees two windows.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(1000);
/// Below this the links cannot be cycled: each TCX and tracepoint link waits for an RCU grace
/// period when it is attached or closed (measured: ~150 ms to attach a node's tc links, ~300
/// ms to close them).
pub const MIN_PERIOD: Duration = Duration::from_millis(500);

impl Duty {
    /// `percent` of every `period` (1..=100; 100 means always attached: `None`).
    pub fn from_percent(percent: u32, period: Duration) -> Result<Option<Duty>, String> {
        if percent == 0 || percent > 100 {
            return Err(format!(
                "duty {percent}%: give a percentage from 1 to 100 (100: always attached)"
            ));
        }
        if period < MIN_PERIOD {
            return Err(format!(
                "duty period {} ms: at least {} ms (closing and reopening a node's links takes a few hundred ms)",
                period.as_millis(),
                MIN_PERIOD.as_millis()
            ));
        }
        if percent == 100 {
            return Ok(None);
        }
        Ok(Some(Duty {
            on: period * percent / 100,
            period,
        }))
    }

    pub fn off(&self) -> Duration {
        self.period.saturating_sub(self.on)
    }

    pub fn percent(&self) -> f64 {
        self.on.as_secs_f64() / self.period.as_secs_f64() * 100.0
    }
}

/// How long the programs were attached, across windows.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachedTime {
    total: Duration,
    since: Option<Instant>,
    /// Windows opened (re-attaches), for the report.
    pub windows: u64,
}

impl AttachedTime {
    /// Attached from now on (the first attach, or a window opening).
    pub fn start(&mut self) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            self.windows += 1;
        }
    }

    /// Detached from now on.
    pub fn stop(&mut self) {
        if let Some(since) = self.since.take() {
            self.total += since.elapsed();
        }
    }

    pub fn total(&self) -> Duration {
        self.total + self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// Starts counting afresh (a reset of the agent's data), keeping the current state.
    pub fn restart(&mut self) {
        self.total = Duration::ZERO;
        self.windows = 0;
        if self.since.is_some() {
            self.since = Some(Instant::now());
            self.windows = 1;
        }
    }
}

/// The thread that closes and opens the windows; stopping it leaves the programs attached or
/// detached as they are (the agent's drop detaches everything anyway).
#[derive(Debug)]
pub struct Cycler {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Cycler {
    /// Runs `close` after `duty.on`, `open` after `duty.off()`, and so on until stopped. The
    /// programs are attached when this starts. `open` takes time (attaching), and the window
    /// only starts when it returns, so it is called that much earlier (its last duration).
    pub fn spawn(
        duty: Duty,
        mut close: impl FnMut() + Send + 'static,
        mut open: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Cycler> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("netprof-duty".into())
            .spawn(move || {
                let mut lead = Duration::ZERO;
                loop {
                    if stopped.recv_timeout(duty.on) != Err(mpsc::RecvTimeoutError::Timeout) {
                        return;
                    }
                    close();
                    let off = duty.off().saturating_sub(lead);
                    if stopped.recv_timeout(off) != Err(mpsc::RecvTimeoutError::Timeout) {
                        return;
                    }
                    let opening = Instant::now();
                    open();
                    lead = opening.elapsed().min(duty.off());
                }
            })?;
        Ok(Cycler {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Cycler {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the agent's duty-cycle thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    };

    #[test]
    fn percent_becomes_windows_and_bad_values_are_refused() {
        let second = Duration::from_secs(1);
        assert_eq!(Duty::from_percent(100, second), Ok(None));
        let duty = Duty::from_percent(10, second).unwrap().unwrap();
        assert_eq!(
            (duty.on, duty.off()),
            (Duration::from_millis(100), Duration::from_millis(900))
        );
        assert!((duty.percent() - 10.0).abs() < 1e-9);
        assert!(Duty::from_percent(0, second)
            .unwrap_err()
            .contains("1 to 100"));
        assert!(Duty::from_percent(101, second).is_err());
        assert!(Duty::from_percent(50, Duration::from_millis(10))
            .unwrap_err()
            .contains("at least 500 ms"));
    }

    #[test]
    fn attached_time_counts_only_open_windows() {
        let mut t = AttachedTime::default();
        t.start();
        std::thread::sleep(Duration::from_millis(30));
        t.stop();
        std::thread::sleep(Duration::from_millis(30));
        let closed = t.total();
        assert!(
            closed >= Duration::from_millis(30) && closed < Duration::from_millis(55),
            "{closed:?}"
        );
        t.start();
        t.start(); // already open: not a new window
        assert_eq!(t.windows, 2);
        t.restart();
        assert_eq!(t.windows, 1);
        assert!(t.total() < Duration::from_millis(10));
    }

    #[test]
    fn the_cycler_alternates_and_stops() {
        let closes = Arc::new(AtomicU32::new(0));
        let opens = Arc::new(AtomicU32::new(0));
        let duty = Duty {
            on: Duration::from_millis(20),
            period: Duration::from_millis(40),
        };
        let (c, o) = (Arc::clone(&closes), Arc::clone(&opens));
        let cycler = Cycler::spawn(
            duty,
            move || {
                c.fetch_add(1, Ordering::SeqCst);
            },
            move || {
                o.fetch_add(1, Ordering::SeqCst);
            },
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(210));
        drop(cycler);
        let (c, o) = (closes.load(Ordering::SeqCst), opens.load(Ordering::SeqCst));
        assert!((3..=6).contains(&c), "closes {c}");
        assert!(c == o || c == o + 1, "closes {c}, opens {o}");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(closes.load(Ordering::SeqCst), c, "stopped");
    }
}
