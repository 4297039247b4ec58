//! Spill planning under pressure: pure, tested without storage.
//!
//! Invariant: when the buffer is above the high watermark, the plan picks the largest
//! partitions first until the projected total falls under the low watermark; below the high
//! watermark it picks nothing (so the worker does not spill in small steps all the time).

/// Partitions to spill early, as indexes into `partitions` (their sizes).
pub fn plan_pressure_spill(partitions: &[u64], held: u64, high: u64, low: u64) -> Vec<usize> {
    if held <= high {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_first_until_under_the_low_watermark() {
        let sizes = [10, 50, 30, 5, 40];
        assert!(plan_pressure_spill(&sizes, 135, 140, 100).is_empty());
        assert_eq!(plan_pressure_spill(&sizes, 150, 140, 100), vec![1]);
        assert_eq!(plan_pressure_spill(&sizes, 150, 140, 60), vec![1, 4]);
        assert_eq!(plan_pressure_spill(&sizes, 150, 140, 0), vec![1, 4, 2, 0, 3]);
        assert!(plan_pressure_spill(&[], 150, 140, 0).is_empty());
        assert_eq!(plan_pressure_spill(&[7, 7], 14, 10, 0), vec![0, 1]);
    }
}
