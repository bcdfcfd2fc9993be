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

/// The order of `targets` targets in block `block`: rotated by one per block, so each target
/// takes every place in turn and none always pings right after the same other one (with two,
/// they swap every block).
pub fn order(targets: usize, block: usize) -> Vec<usize> {
    (0..targets).map(|i| (i + block) % targets.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_targets_take_every_place_in_turn() {
        assert_eq!(order(2, 0), [0, 1]);
        assert_eq!(order(2, 1), [1, 0]);
        assert_eq!(order(2, 2), [0, 1]);
        assert_eq!(order(1, 1), [0]);
        let firsts: Vec<usize> = (0..9).map(|b| order(9, b)[0]).collect();
        assert_eq!(firsts, (0..9).collect::<Vec<_>>());
    }

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
