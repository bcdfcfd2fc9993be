//! `ip netns` names for namespaces that have none, since the agent addresses namespaces by
//! name (`ip -n NAME`, `/run/netns/NAME`):
//! - its own, for `POST /v1/start` without `netns`: in Kubernetes the agent runs with
//!   hostNetwork, so the node's namespace is its own (`netprof.agent-PID`);
//! - a pod's that only a process holds (`/proc/PID/ns/net`, found from a pod IP by
//!   [`crate::agent::pod_netns`]): `netprof.pod-PID-N`, PID being the agent's.
//!
//! A name is a file under `/run/netns` with the namespace bind mounted on it, as `ip netns
//! attach NAME PID` makes; unmounted and removed on drop. (The DaemonSet mounts the host's
//! `/run/netns` with HostToContainer propagation, so the bind mount stays in the container;
//! the host sees only an empty file while the agent runs.)

use std::{
    ffi::CString,
    io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use crate::netns::{named_path, NETNS_RUN_DIR};

const OWN: &str = "/proc/self/ns/net";

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot name the network namespace {path}: {action} failed \
     (the agent needs {NETNS_RUN_DIR} writable; in Kubernetes a read-write hostPath mount)"
)]
pub struct NetnsNameError {
    path: PathBuf,
    action: &'static str,
    #[source]
    source: io::Error,
}

/// The name, while it exists.
#[derive(Debug)]
pub struct NetnsName {
    name: String,
    path: PathBuf,
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in a netns path")
}

fn unmount_and_remove(path: &Path) {
    // SAFETY: umount2(2) with a NUL-terminated path; failure (nothing mounted) is fine.
    unsafe { libc::umount2(c_path(path).as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_file(path);
}

/// The prefix of the names agents give their namespace.
const PREFIX: &str = "netprof.agent-";
/// ... and pods' namespaces found through a process (`netprof.pod-AGENTPID-N`).
const POD_PREFIX: &str = "netprof.pod-";

/// The pid of the agent that made `name`, if it is one of the names agents make.
fn maker(name: &str) -> Option<u32> {
    if let Some(pid) = name.strip_prefix(PREFIX) {
        return pid.parse().ok();
    }
    let rest = name.strip_prefix(POD_PREFIX)?;
    let (pid, index) = rest.split_once('-')?;
    index.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Removes the names of agents that are gone (killed with SIGKILL, so their drop never ran):
/// `netprof.agent-PID` and `netprof.pod-PID-N` whose PID no longer runs. Returns the names
/// removed.
pub fn remove_stale() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = maker(&name) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            unmount_and_remove(&entry.path());
            removed.push(name);
        }
    }
    removed
}

impl NetnsName {
    /// Names this process's network namespace (first removing names left by killed agents).
    pub fn attach() -> Result<Self, NetnsNameError> {
        for name in remove_stale() {
            log::info!("removed {name} under {NETNS_RUN_DIR}: its agent is gone");
        }
        Self::bind(format!("{PREFIX}{}", std::process::id()), Path::new(OWN))
    }

    /// Names the namespace at `source` (`/proc/PID/ns/net`) `netprof.pod-AGENTPID-INDEX`.
    pub fn alias(source: &Path, index: usize) -> Result<Self, NetnsNameError> {
        Self::bind(
            format!("{POD_PREFIX}{}-{index}", std::process::id()),
            source,
        )
    }

    /// Bind-mounts `source` on `/run/netns/NAME`.
    fn bind(name: String, source: &Path) -> Result<Self, NetnsNameError> {
        let path = named_path(&name).expect("a valid netns name");
        let fail = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| NetnsNameError {
                path,
                action,
                source,
            }
        };
        if path.exists() {
            if same_file(&path, source) {
                return Ok(Self { name, path });
            }
            // Left by an earlier process with this pid (a crash), in another namespace.
            unmount_and_remove(&path);
        }
        std::fs::create_dir_all(NETNS_RUN_DIR).map_err(fail("creating the directory", &path))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(fail("creating the mount point", &path))?;
        let source_c = c_path(source);
        let target = c_path(&path);
        // SAFETY: mount(2) with NUL-terminated paths, no filesystem type or data.
        let rc = unsafe {
            libc::mount(
                source_c.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            let _ = std::fs::remove_file(&path);
            return Err(fail("bind-mounting the namespace", &path)(err));
        }
        Ok(Self { name, path })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NetnsName {
    fn drop(&mut self) {
        unmount_and_remove(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_own_namespace_and_removes_the_name() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            crate::testing::print_skip(
                "own_netns",
                &format!("needs root to bind-mount under {NETNS_RUN_DIR}"),
            );
            return;
        }
        let own = NetnsName::attach().unwrap();
        let path = named_path(own.name()).unwrap();
        assert!(
            same_file(&path, Path::new(OWN)),
            "the name is this process's namespace"
        );
        // A second start in the same process finds the name in place.
        let again = NetnsName::attach().unwrap();
        assert_eq!(again.name(), own.name());
        std::mem::forget(again);
        drop(own);
        assert!(!path.exists(), "{} left behind", path.display());
    }

    #[test]
    fn names_are_traced_to_the_agent_that_made_them() {
        assert_eq!(maker("netprof.agent-12"), Some(12));
        assert_eq!(maker("netprof.pod-12-0"), Some(12));
        assert_eq!(maker("netprof.pod-12"), None);
        assert_eq!(maker("netprof.pod-x-1"), None);
        assert_eq!(maker("cni-1234"), None);
    }

    #[test]
    fn names_of_agents_that_are_gone_are_removed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            crate::testing::print_skip(
                "own_netns",
                &format!("needs root to write under {NETNS_RUN_DIR}"),
            );
            return;
        }
        std::fs::create_dir_all(NETNS_RUN_DIR).unwrap();
        // Above the kernel's largest pid_max (2^22): no process has it.
        let stale = Path::new(NETNS_RUN_DIR).join(format!("{PREFIX}4194305"));
        let other = Path::new(NETNS_RUN_DIR).join("netprof.agentx-4194305");
        let stale_pod = Path::new(NETNS_RUN_DIR).join(format!("{POD_PREFIX}4194305-3"));
        std::fs::write(&stale, b"").unwrap();
        std::fs::write(&other, b"").unwrap();
        std::fs::write(&stale_pod, b"").unwrap();
        let removed = remove_stale();
        assert!(removed.contains(&format!("{PREFIX}4194305")), "{removed:?}");
        assert!(
            removed.contains(&format!("{POD_PREFIX}4194305-3")),
            "{removed:?}"
        );
        assert!(!stale.exists() && !stale_pod.exists());
        assert!(other.exists(), "only agent names are touched");
        std::fs::remove_file(other).unwrap();
    }
}
