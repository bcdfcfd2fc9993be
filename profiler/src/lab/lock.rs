//! One user of a lab at a time: an advisory `flock` on /run/netprof/labs/<lab>.lock, released
//! by the kernel when the process exits, however it exits.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

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

/// Held for as long as a command uses the lab.
#[derive(Debug)]
pub struct LabLock {
    _file: File,
}

impl LabLock {
    pub fn acquire(lab: &str) -> Result<Self, LockError> {
        let path = PathBuf::from(STATE_DIR).join(format!("{lab}.lock"));
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(STATE_DIR).map_err(io)?;
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
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(LockError::Busy {
                lab: lab.to_owned(),
                holder: holder.trim().to_owned(),
            });
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
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
        LabLock::acquire(&lab).unwrap();
        let _ = fs::remove_file(PathBuf::from(STATE_DIR).join(format!("{lab}.lock")));
    }
}
