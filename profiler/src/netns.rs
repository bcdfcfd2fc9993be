//! Run code inside a named network namespace (`ip netns add NAME` -> `/run/netns/NAME`).
//!
//! Several kernel interfaces act in the network namespace of the *calling thread*: interface
//! name lookups, netlink (tc qdiscs and filters), TCX link creation by ifindex, netfilter BPF
//! links. [`NetnsGuard`] moves the current OS thread into a namespace with `setns(2)` and moves
//! it back when dropped; [`run_in`] wraps a closure in a guard. [`NetnsHandle`] keeps a
//! namespace open, to come back to the very same one later (e.g. to detach what was attached).
//!
//! Only the current thread moves: other threads, and the process as seen through
//! `/proc/self/ns/net`, stay where they are. Threads spawned while the guard is held start in
//! the guard's namespace (a new thread copies its creator's namespaces).
//!
//! # Async code
//!
//! On tokio (or any executor that moves tasks between threads) enter a namespace only inside
//! `tokio::task::spawn_blocking` and drop the guard before the closure returns. Never hold a
//! guard across an `.await`: the task may resume on another worker thread and the original
//! worker would stay in the foreign namespace. [`NetnsGuard`] is `!Send`, so a future holding
//! one across an `.await` cannot be passed to `tokio::spawn`.

use std::{
    fs::File,
    io,
    marker::PhantomData,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

/// Where `ip netns` keeps named network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The current thread's network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Errors entering or leaving a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name is not a plain `ip netns` name.
    #[error(
        "invalid network namespace name {name:?}: expected a name as listed by `ip netns list` \
         (no '/', not '.' or '..')"
    )]
    InvalidName { name: String },
    /// `/run/netns/NAME` (or the given path) does not exist.
    #[error("network namespace {path} not found: check `ip netns list`")]
    NotFound { path: PathBuf },
    /// A namespace file could not be opened.
    #[error("cannot open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `setns(2)` into the target namespace failed.
    #[error(
        "cannot move this thread into network namespace {path}: setns needs CAP_SYS_ADMIN, \
         run as root"
    )]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `setns(2)` back into the original namespace failed.
    #[error("cannot move this thread back to its original network namespace")]
    Leave {
        #[source]
        source: io::Error,
    },
}

/// Path of the named namespace `name` under [`NETNS_RUN_DIR`].
pub fn named_path(name: &str) -> Result<PathBuf, NetnsError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(NetnsError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(Path::new(NETNS_RUN_DIR).join(name))
}

/// An open network namespace: holding it keeps the namespace alive and identifies it even if
/// its name is removed or reused, so code can come back to exactly this namespace later (to
/// detach what it attached there, say).
#[derive(Debug)]
pub struct NetnsHandle {
    fd: OwnedFd,
    path: PathBuf,
}

impl NetnsHandle {
    /// Opens the `ip netns` namespace `name` (`/run/netns/NAME`).
    pub fn open(name: &str) -> Result<Self, NetnsError> {
        Self::open_path(&named_path(name)?)
    }

    /// Opens the network namespace file at `path`, e.g. a bind mount under `/run/netns` or
    /// `/proc/PID/ns/net` of a container's process.
    pub fn open_path(path: &Path) -> Result<Self, NetnsError> {
        Ok(Self {
            fd: open_ns(path)?,
            path: path.to_owned(),
        })
    }

    /// The current thread's network namespace.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open_path(Path::new(THREAD_NETNS))
    }

    /// The path the namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the current thread is in this namespace already.
    pub fn is_current(&self) -> Result<bool, NetnsError> {
        let ours = File::from(self.fd.try_clone().map_err(|source| NetnsError::Open {
            path: self.path.clone(),
            source,
        })?);
        let here = std::fs::metadata(THREAD_NETNS).map_err(|source| NetnsError::Open {
            path: THREAD_NETNS.into(),
            source,
        })?;
        let ours = ours.metadata().map_err(|source| NetnsError::Open {
            path: self.path.clone(),
            source,
        })?;
        Ok((ours.dev(), ours.ino()) == (here.dev(), here.ino()))
    }

    /// [`NetnsHandle::enter`], or `None` when the thread is in this namespace already (so no
    /// `setns`, and no CAP_SYS_ADMIN, is needed).
    pub fn enter_if_elsewhere(&self) -> Result<Option<NetnsGuard>, NetnsError> {
        if self.is_current()? {
            Ok(None)
        } else {
            self.enter().map(Some)
        }
    }

    /// Moves the current thread into this namespace until the guard is dropped.
    pub fn enter(&self) -> Result<NetnsGuard, NetnsError> {
        let original = open_ns(Path::new(THREAD_NETNS))?;
        setns(&self.fd).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        Ok(NetnsGuard {
            original: Some(original),
            target: self.path.clone(),
            _not_send: PhantomData,
        })
    }
}

/// Keeps the current thread in another network namespace until dropped.
///
/// Dropping the guard returns the thread to the namespace it was in when the guard was created.
/// If that fails the process aborts: a thread silently left in a foreign namespace would
/// attach, connect and listen in the wrong place. Use [`NetnsGuard::leave`] to handle the error
/// instead.
#[must_use = "the thread returns to its original namespace when the guard is dropped"]
#[derive(Debug)]
pub struct NetnsGuard {
    /// `None` once the thread is back (after [`NetnsGuard::leave`]).
    original: Option<OwnedFd>,
    target: PathBuf,
    /// The guard belongs to the thread that created it.
    _not_send: PhantomData<*const ()>,
}

impl NetnsGuard {
    /// Moves the current thread into the `ip netns` namespace `name` (`/run/netns/NAME`).
    pub fn enter(name: &str) -> Result<Self, NetnsError> {
        NetnsHandle::open(name)?.enter()
    }

    /// Moves the current thread into the network namespace file at `path`.
    pub fn enter_path(path: &Path) -> Result<Self, NetnsError> {
        NetnsHandle::open_path(path)?.enter()
    }

    /// The namespace file this guard entered.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Returns the thread to its original namespace, reporting failure instead of aborting.
    /// After an error the thread is still in the target namespace.
    pub fn leave(mut self) -> Result<(), NetnsError> {
        self.restore()
    }

    fn restore(&mut self) -> Result<(), NetnsError> {
        match self.original.take() {
            Some(fd) => setns(&fd).map_err(|source| NetnsError::Leave { source }),
            None => Ok(()),
        }
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(err) = self.restore() {
            let source = std::error::Error::source(&err).map(ToString::to_string);
            log::error!("{err}: {}; aborting", source.unwrap_or_default());
            eprintln!("netprof: {err}; aborting");
            std::process::abort();
        }
    }
}

/// Runs `f` on the current thread inside the `ip netns` namespace `netns`, then moves the
/// thread back (also when `f` panics; like dropping a [`NetnsGuard`], failing to move back
/// aborts).
pub fn run_in<T>(netns: &str, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
    let _guard = NetnsGuard::enter(netns)?;
    Ok(f())
}

fn open_ns(path: &Path) -> Result<OwnedFd, NetnsError> {
    match File::open(path) {
        Ok(file) => Ok(file.into()),
        Err(source) if source.kind() == io::ErrorKind::NotFound => Err(NetnsError::NotFound {
            path: path.to_owned(),
        }),
        Err(source) => Err(NetnsError::Open {
            path: path.to_owned(),
            source,
        }),
    }
}

fn setns(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own; CLONE_NEWNET makes the kernel check that it
    // refers to a network namespace.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        process::Command,
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// Inode of the current thread's network namespace.
    fn thread_netns_inode() -> u64 {
        std::fs::metadata(THREAD_NETNS)
            .expect("stat /proc/thread-self/ns/net")
            .ino()
    }

    /// A fresh `ip netns` namespace, deleted on drop.
    struct TempNetns(String);

    impl TempNetns {
        /// `None` (with the skip marker printed) when this process cannot create namespaces.
        fn create(test: &str) -> Option<Self> {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                crate::testing::print_skip(test, "needs root to create network namespaces");
                return None;
            }
            let name = format!(
                "netprof-u-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            match Command::new("ip").args(["netns", "add", &name]).status() {
                Ok(status) if status.success() => Some(Self(name)),
                Ok(status) => panic!("`ip netns add {name}` failed: {status}"),
                Err(err) => {
                    crate::testing::print_skip(test, &format!("cannot run `ip` (iproute2): {err}"));
                    None
                }
            }
        }
    }

    impl Drop for TempNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    #[test]
    fn guard_enters_and_leaves() {
        let Some(ns) = TempNetns::create("guard_enters_and_leaves") else {
            return;
        };
        let before = thread_netns_inode();
        let target = std::fs::metadata(named_path(&ns.0).unwrap()).unwrap().ino();
        assert_ne!(before, target, "a fresh namespace has its own inode");

        let guard = NetnsGuard::enter(&ns.0).unwrap();
        assert_eq!(
            thread_netns_inode(),
            target,
            "thread is in the new namespace"
        );
        drop(guard);
        assert_eq!(thread_netns_inode(), before, "thread is back after drop");
    }

    #[test]
    fn handle_knows_whether_the_thread_is_inside() {
        let Some(ns) = TempNetns::create("handle_knows_whether_the_thread_is_inside") else {
            return;
        };
        let here = NetnsHandle::current().unwrap();
        let there = NetnsHandle::open(&ns.0).unwrap();
        assert!(here.is_current().unwrap());
        assert!(!there.is_current().unwrap());
        assert!(here.enter_if_elsewhere().unwrap().is_none());
        let guard = there.enter_if_elsewhere().unwrap().expect("must enter");
        assert!(there.is_current().unwrap());
        assert!(!here.is_current().unwrap());
        drop(guard);
        assert!(here.is_current().unwrap());
    }

    #[test]
    fn only_the_current_thread_moves() {
        let Some(ns) = TempNetns::create("only_the_current_thread_moves") else {
            return;
        };
        let process_ns = || std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let before = process_ns();
        let _guard = NetnsGuard::enter(&ns.0).unwrap();
        let other = std::thread::scope(|s| {
            // A thread spawned inside starts inside.
            s.spawn(thread_netns_inode).join().unwrap()
        });
        assert_eq!(other, thread_netns_inode());
        assert_eq!(process_ns(), before, "the main thread did not move");
    }

    #[test]
    fn run_in_returns_value_and_restores_after_panic() {
        let Some(ns) = TempNetns::create("run_in_returns_value_and_restores_after_panic") else {
            return;
        };
        let before = thread_netns_inode();
        let inside = run_in(&ns.0, thread_netns_inode).unwrap();
        assert_ne!(inside, before);
        assert_eq!(thread_netns_inode(), before);

        let caught = std::panic::catch_unwind(|| {
            run_in(&ns.0, || panic!("boom inside the namespace")).unwrap();
        });
        assert!(caught.is_err());
        assert_eq!(
            thread_netns_inode(),
            before,
            "the guard restored the namespace on unwind"
        );
    }

    #[test]
    fn missing_and_invalid_names_are_errors() {
        for bad in ["", ".", "..", "a/b", "../../proc/1/ns/net"] {
            assert!(
                matches!(NetnsGuard::enter(bad), Err(NetnsError::InvalidName { .. })),
                "{bad:?} must be rejected"
            );
        }
        let missing = format!("netprof-u-{}-does-not-exist", std::process::id());
        match NetnsGuard::enter(&missing) {
            Err(err @ NetnsError::NotFound { .. }) => {
                assert!(err.to_string().contains(&missing), "{err}");
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
}
