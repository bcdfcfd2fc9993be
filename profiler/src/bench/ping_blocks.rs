//! Pings of states being compared, in blocks that alternate between the states. On a shared
//! machine the RTT's p50 changes in steps that last seconds (the block medians of one
//! 2000-ping run here stepped from 38 to 19 µs halfway), so a state measured in one piece takes
//! whichever stretch it ran in; in alternating blocks every state sees the same stretches.

/// Blocks a state's pings are split into.
pub const BLOCKS: u32 = 10;

/// `count` pings as at most `blocks` blocks whose sizes differ by one at most.
pub fn split(count: u32, blocks: u32) -> Vec<u32> {
    let blocks = blocks.clamp(1, count.max(1));
    (0..blocks)
        .map(|b| count / blocks + u32::from(b < count % blocks))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_add_up_and_differ_by_one_at_most() {
        assert_eq!(split(1000, 10), vec![100; 10]);
        let uneven = split(1005, 10);
        assert_eq!(uneven.iter().sum::<u32>(), 1005);
        assert_eq!((uneven[0], uneven[9]), (101, 100));
        assert_eq!(split(3, 10), vec![1, 1, 1]);
        assert_eq!(split(0, 10), vec![0]);
        assert_eq!(split(7, 0), vec![7]);
    }
}
