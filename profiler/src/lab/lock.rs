//! One user of a lab at a time: an advisory `flock` on /run/netprof/labs/<lab>.lock, released
//! by the kernel when the process exits, however it exits. The holder removes the file when it
//! releases the lock, so nothing stays in /run; a process that opened the file just before it
//! was removed finds, once it holds the lock, that the path no longer names its file, and
//! tries again.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const STATE_DIR: &str = "/run/netprof/labs";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lab '{lab}' is in use by another netprof (pid {holder}): wait for it to finish, or use another lab with --lab NAME")]
    Busy { lab: String, holder: String },
    #[error("cannot create the lab lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held for as long as a command uses the lab; dropping it removes the lock file.
#[derive(Debug)]
pub struct LabLock {
    /// Holds the lock; closed after `drop` removed the file.
    _file: File,
    path: PathBuf,
}

impl LabLock {
    pub fn acquire(lab: &str) -> Result<Self, LockError> {
        let path = PathBuf::from(STATE_DIR).join(format!("{lab}.lock"));
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(STATE_DIR).map_err(io)?;
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io)?;
            // SAFETY: flock on a file descriptor we own; no memory is shared.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                if !still_named(&file, &path).map_err(io)? {
                    // Its holder is releasing it right now.
                    continue;
                }
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(LockError::Busy {
                    lab: lab.to_owned(),
                    holder: holder.trim().to_owned(),
                });
            }
            if !still_named(&file, &path).map_err(io)? {
                continue;
            }
            file.set_len(0).map_err(io)?;
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            write!(file, "{}", std::process::id()).map_err(io)?;
            return Ok(Self { _file: file, path });
        }
    }
}

/// Whether `path` still names `file` (a releasing holder may have removed it after we
/// opened it).
fn still_named(file: &File, path: &Path) -> std::io::Result<bool> {
    let ours = file.metadata()?;
    match fs::metadata(path) {
        Ok(named) => Ok(named.dev() == ours.dev() && named.ino() == ours.ino()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

impl Drop for LabLock {
    fn drop(&mut self) {
        // Removed while still locked: a waiter that opened it retries on a fresh file.
        if let Err(err) = fs::remove_file(&self.path) {
            log::warn!("cannot remove the lab lock {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_pid() {
        if unsafe { libc::geteuid() } != 0 {
            crate::testing::print_skip("lab lock", &format!("needs root for {STATE_DIR}"));
            return;
        }
        let lab = format!("unit-lock-{}", std::process::id());
        let first = LabLock::acquire(&lab).unwrap();
        // flock locks belong to the open file description, so a second open conflicts.
        let err = LabLock::acquire(&lab).unwrap_err();
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(first);
        let path = PathBuf::from(STATE_DIR).join(format!("{lab}.lock"));
        assert!(!path.exists(), "{} left after release", path.display());
        let again = LabLock::acquire(&lab).unwrap();
        assert!(path.exists());
        drop(again);
        assert!(!path.exists(), "{} left after release", path.display());
    }

    #[test]
    fn a_file_removed_by_its_releasing_holder_is_not_locked() {
        if unsafe { libc::geteuid() } != 0 {
            crate::testing::print_skip("lab lock", &format!("needs root for {STATE_DIR}"));
            return;
        }
        let lab = format!("unit-lock-stale-{}", std::process::id());
        let path = PathBuf::from(STATE_DIR).join(format!("{lab}.lock"));
        // What a waiter holds when the holder removed the file after the waiter opened it.
        let first = LabLock::acquire(&lab).unwrap();
        let stale = File::open(&path).unwrap();
        drop(first);
        assert!(!still_named(&stale, &path).unwrap());
        let fresh = LabLock::acquire(&lab).unwrap();
        assert!(still_named(&fresh._file, &path).unwrap());
        assert!(!still_named(&stale, &path).unwrap());
    }
}
