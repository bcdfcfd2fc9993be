//! Types and constants shared by the kernel programs (`profiler-ebpf`) and user space.
//!
//! Every type here is `#[repr(C)]` with explicit padding so both sides agree on the layout.
#![no_std]

pub mod counter;
pub mod datapath;
pub mod netfilter;

/// `a == b`, usable in `const` context. The kernel crate uses it to prove at compile time that a
/// program or map symbol is spelled like the name constant the loader looks up.
pub const fn names_match(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::names_match;

    #[test]
    fn names_match_compares_whole_strings() {
        assert!(names_match("count_ingress", "count_ingress"));
        assert!(!names_match("count_ingress", "count_egress"));
        assert!(!names_match("count", "count_egress"));
        assert!(names_match("", ""));
    }
}
