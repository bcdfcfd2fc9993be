//! Fast duty-cycle window edges: expedited RCU grace periods while links come and go.
//!
//! Every TCX attach and detach waits for an RCU grace period under the RTNL lock, one after
//! another for a node's tc links. The links that are already in stay in, paused, for that
//! long, so at a short duty cycle the programs sit in the datapath far longer than the
//! windows say. With `/sys/kernel/rcu_expedited` set, an edge waits for expedited grace
//! periods instead, a fraction of the time (docs/agent.md has the figures). The kernel itself
//! expedites the grace periods of network configuration under RTNL (`synchronize_net`), so
//! this asks for nothing unusual.
//!
//! The knob is global, so it is set only for the length of one edge, under an exclusive
//! `flock` shared by every netprof agent of the machine, and the value found is written
//! back. The lock file holds that value while the knob is changed: if an agent dies in the
//! middle (SIGKILL), the next agent to take the lock writes it back first.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const KNOB: &str = "/sys/kernel/rcu_expedited";
const LOCK_FILE: &str = "/run/netprof/rcu_expedited.lock";

/// Paths of the knob and of the lock file (tests point them elsewhere).
#[derive(Debug, Clone)]
pub struct ExpeditedRcu {
    knob: PathBuf,
    lock_file: PathBuf,
}

impl Default for ExpeditedRcu {
    fn default() -> Self {
        ExpeditedRcu {
            knob: KNOB.into(),
            lock_file: LOCK_FILE.into(),
        }
    }
}

/// While alive, grace periods are expedited; dropping it writes the old value back.
#[must_use]
pub struct Expedited {
    lock: File,
    knob: PathBuf,
    old: String,
}

impl ExpeditedRcu {
    #[cfg(test)]
    pub fn at(knob: &Path, lock_file: &Path) -> Self {
        ExpeditedRcu {
            knob: knob.into(),
            lock_file: lock_file.into(),
        }
    }

    /// Expedites grace periods until the guard drops. `Err` says why not (the edge then runs
    /// at the normal, slower pace).
    pub fn begin(&self) -> Result<Expedited, String> {
        let mut lock = self.take_lock()?;
        restore_left_over(&mut lock, &self.knob)?;
        let old = read_knob(&self.knob)?;
        if old == "1" {
            // Already expedited (by the administrator): nothing to change or restore.
            return Ok(Expedited {
                lock,
                knob: self.knob.clone(),
                old,
            });
        }
        write_all(&mut lock, old.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", self.lock_file.display()))?;
        if let Err(err) = fs::write(&self.knob, "1") {
            let _ = lock.set_len(0);
            return Err(format!("cannot write {}: {err}", self.knob.display()));
        }
        Ok(Expedited {
            lock,
            knob: self.knob.clone(),
            old,
        })
    }

    /// The default knob if this agent can set it (tried once: set and written back), else
    /// `None` with the reason logged.
    pub fn probe() -> Option<Self> {
        let rcu = ExpeditedRcu::default();
        match rcu.begin() {
            Ok(guard) => {
                drop(guard);
                Some(rcu)
            }
            Err(reason) => {
                log::warn!("duty cycle: window edges at the normal pace (~100 ms with paused programs in the datapath): {reason}");
                None
            }
        }
    }

    fn take_lock(&self) -> Result<File, String> {
        if let Some(dir) = self.lock_file.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.lock_file)
            .map_err(|e| format!("cannot open {}: {e}", self.lock_file.display()))?;
        // SAFETY: flock on an fd this function owns; the lock goes with the file.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(format!(
                "cannot lock {}: {}",
                self.lock_file.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(file)
    }
}

impl Drop for Expedited {
    fn drop(&mut self) {
        if self.old == "1" {
            return;
        }
        match fs::write(&self.knob, self.old.as_bytes()) {
            // Only a restored knob clears the note in the lock file.
            Ok(()) => {
                let _ = self.lock.set_len(0);
            }
            Err(err) => log::warn!(
                "cannot write {} back to {}: {err}",
                self.knob.display(),
                self.old
            ),
        }
    }
}

/// A value left in the lock file is the knob's value before an agent died mid-edge.
fn restore_left_over(lock: &mut File, knob: &Path) -> Result<(), String> {
    let mut left = String::new();
    lock.seek(SeekFrom::Start(0))
        .and_then(|_| lock.read_to_string(&mut left))
        .map_err(|e| format!("cannot read the lock file: {e}"))?;
    let left = left.trim();
    if left.is_empty() {
        return Ok(());
    }
    log::info!(
        "writing {} back to {left} (a netprof agent died while it had changed it)",
        knob.display()
    );
    fs::write(knob, left).map_err(|e| format!("cannot write {}: {e}", knob.display()))?;
    lock.set_len(0)
        .map_err(|e| format!("cannot clear the lock file: {e}"))
}

fn read_knob(knob: &Path) -> Result<String, String> {
    fs::read_to_string(knob)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("cannot read {}: {e}", knob.display()))
}

fn write_all(file: &mut File, text: &[u8]) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(text)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn setup(name: &str, value: &str) -> (Scratch, ExpeditedRcu) {
        let dir = std::env::temp_dir().join(format!("netprof-rcu-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("knob"), value).unwrap();
        let rcu = ExpeditedRcu::at(&dir.join("knob"), &dir.join("run/lock"));
        (Scratch(dir), rcu)
    }

    fn read(dir: &Scratch, name: &str) -> String {
        fs::read_to_string(dir.0.join(name))
            .unwrap()
            .trim()
            .to_owned()
    }

    #[test]
    fn sets_the_knob_for_the_guards_life_and_writes_the_old_value_back() {
        let (dir, rcu) = setup("set", "0\n");
        let guard = rcu.begin().unwrap();
        assert_eq!(read(&dir, "knob"), "1");
        assert_eq!(
            read(&dir, "run/lock"),
            "0",
            "the old value is noted for a crash"
        );
        drop(guard);
        assert_eq!(read(&dir, "knob"), "0");
        assert_eq!(read(&dir, "run/lock"), "");
    }

    #[test]
    fn leaves_an_already_expedited_kernel_alone() {
        let (dir, rcu) = setup("already", "1\n");
        drop(rcu.begin().unwrap());
        assert_eq!(read(&dir, "knob"), "1");
        assert_eq!(read(&dir, "run/lock"), "");
    }

    #[test]
    fn the_next_agent_restores_what_a_killed_one_left() {
        // What an agent killed mid-edge leaves: the knob set, the old value in the lock file.
        let (dir, rcu) = setup("killed", "1\n");
        fs::create_dir_all(dir.0.join("run")).unwrap();
        fs::write(dir.0.join("run/lock"), "0").unwrap();
        let guard = rcu.begin().unwrap();
        assert_eq!(read(&dir, "knob"), "1");
        drop(guard);
        assert_eq!(
            read(&dir, "knob"),
            "0",
            "the value from before the killed agent"
        );
        assert_eq!(read(&dir, "run/lock"), "");
    }

    #[test]
    fn an_unwritable_knob_is_an_error_that_names_it() {
        let (dir, _) = setup("missing", "0");
        let rcu = ExpeditedRcu::at(&dir.0.join("missing/knob"), &dir.0.join("lock"));
        let err = rcu.begin().err().unwrap();
        assert!(err.contains("missing/knob"), "{err}");
    }
}
