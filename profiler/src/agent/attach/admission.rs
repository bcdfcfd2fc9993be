//! The program arrays through which checkpoints tail-call admission, closed last.
//!
//! A program array is emptied when its last user-space fd closes, and freed when the last
//! program that tail-calls through it is gone. Between the two, any process that opens it by
//! id and closes it again (`bpftool map list`, a leftover check) makes the kernel empty it
//! once more, and a second emptying while the first is still queued takes a reference that is
//! never given back: the array stays in the kernel forever. So the agent keeps
//! its fd until the programs that tail-call through it are gone, and only then closes it: the
//! array is then freed as soon as it is emptied.

use std::time::{Duration, Instant};

/// How long dropping waits for the tail-calling programs to be freed (an RCU grace period or
/// two; more only on a very busy machine).
const PROGRAMS_GONE_DEADLINE: Duration = Duration::from_secs(2);

/// A program array (any owner of its fd: an aya map or a netfilter loader's array) closed
/// only once the programs `callers` are no longer loaded.
#[derive(Debug)]
pub(super) struct CloseAfterCallers<T> {
    array: Option<T>,
    callers: Vec<u32>,
}

impl<T> CloseAfterCallers<T> {
    pub fn new(array: T, callers: Vec<u32>) -> Self {
        Self {
            array: Some(array),
            callers,
        }
    }
}

impl<T> Drop for CloseAfterCallers<T> {
    fn drop(&mut self) {
        let deadline = Instant::now() + PROGRAMS_GONE_DEADLINE;
        while Instant::now() < deadline && any_loaded(&self.callers) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if any_loaded(&self.callers) {
            log::warn!(
                "programs {:?} still loaded {} s after detaching; closing their admission array anyway",
                self.callers,
                PROGRAMS_GONE_DEADLINE.as_secs()
            );
        }
        drop(self.array.take());
    }
}

/// Whether any of these program ids is still loaded in the kernel.
fn any_loaded(ids: &[u32]) -> bool {
    if ids.is_empty() {
        return false;
    }
    aya::programs::loaded_programs()
        .flatten()
        .any(|info| ids.contains(&info.id()))
}
