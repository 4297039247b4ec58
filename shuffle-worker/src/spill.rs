//! Spill planning under pressure: pure, tested without storage.
//!
//! Invariant: when the buffer is above the high watermark, the plan picks the largest
//! partitions first until the projected total falls under the low watermark; below the high
//! watermark it picks nothing (so the worker does not spill in small steps all the time).
//! When the data disk is under its reserve it picks every partition holding bytes, largest
//! first: value log files interleave partitions, so a few small long-lived partitions can keep
//! far more disk than they hold, and only emptying the log frees it.

/// Partitions to spill early, as indexes into `partitions` (their sizes).
pub fn plan_pressure_spill(partitions: &[u64], held: u64, high: u64, low: u64, disk_low: bool) -> Vec<usize> {
    let low = if disk_low { 0 } else { low };
    if held <= high && !disk_low {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..partitions.len()).collect();
    // Largest first; ties by position for a stable plan.
    order.sort_by(|a, b| partitions[*b].cmp(&partitions[*a]).then(a.cmp(b)));
    let mut projected = held;
    let mut out = Vec::new();
    for i in order {
        if projected <= low || partitions[i] == 0 {
            break;
        }
        projected = projected.saturating_sub(partitions[i]);
        out.push(i);
    }
    out
}

/// What the sweep knows about one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepFacts {
    /// The master still knows the object's shuffle.
    pub shuffle_known: bool,
    /// The master recorded this object as a segment.
    pub recorded: bool,
    /// The worker that wrote it is active or draining (it collects its own garbage).
    pub writer_alive: bool,
    /// The object is older than the grace period (no upload or report can be in flight).
    pub old_enough: bool,
}

/// Whether a spilled object is garbage: never while young; always once its shuffle is gone;
/// otherwise when the master never recorded it and its writer is gone for good.
pub fn is_garbage(f: SweepFacts) -> bool {
    f.old_enough && (!f.shuffle_known || (!f.recorded && !f.writer_alive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_first_until_under_the_low_watermark() {
        let sizes = [10, 50, 30, 5, 40];
        assert!(plan_pressure_spill(&sizes, 135, 140, 100, false).is_empty());
        assert_eq!(plan_pressure_spill(&sizes, 150, 140, 100, false), vec![1]);
        assert_eq!(plan_pressure_spill(&sizes, 150, 140, 60, false), vec![1, 4]);
        assert_eq!(plan_pressure_spill(&sizes, 150, 140, 0, false), vec![1, 4, 2, 0, 3]);
        assert!(plan_pressure_spill(&[], 150, 140, 0, false).is_empty());
        assert_eq!(plan_pressure_spill(&[7, 7], 14, 10, 0, false), vec![0, 1]);
    }

    #[test]
    fn a_low_disk_spills_every_partition_holding_bytes() {
        // Far under the watermarks, but the disk is low: everything with bytes goes.
        assert_eq!(plan_pressure_spill(&[3, 0, 9, 1], 13, 1000, 500, true), vec![2, 0, 3]);
        assert!(plan_pressure_spill(&[0, 0], 0, 1000, 500, true).is_empty());
    }

    #[test]
    fn garbage_rules() {
        let f = |shuffle_known, recorded, writer_alive, old_enough| {
            is_garbage(SweepFacts { shuffle_known, recorded, writer_alive, old_enough })
        };
        assert!(f(false, false, true, true), "removed shuffle");
        assert!(f(false, true, true, true), "removed shuffle, even if it was recorded");
        assert!(f(true, false, false, true), "unrecorded, writer gone");
        assert!(!f(true, false, true, true), "unrecorded, writer alive: it cleans up itself");
        assert!(!f(true, true, false, true), "recorded data is never garbage");
        assert!(!f(false, false, false, false), "young objects wait");
    }
}
