//! Spill planning under pressure, and which spilled objects are garbage: pure, tested without
//! storage.
//!
//! Invariant: when the buffer is above the high watermark, the plan picks the largest
//! partitions first until the projected total falls under the low watermark; below the high
//! watermark it picks nothing (so the worker does not spill in small steps all the time).
//! When the data disk is under its reserve it picks every partition holding bytes, largest
//! first: value log files interleave partitions, so a few small long-lived partitions can keep
//! far more disk than they hold, and only emptying the log frees it.
//!
//! Garbage invariants ([`is_garbage`]; the sweep is the only deleter of objects):
//! - An object is deleted only if the master's answer it is judged by (the shuffle list, the
//!   recorded segments) was asked for at least the minimum age after the object was last
//!   written. A report is sent as soon as its upload completes, so one still on its way (a
//!   command queued in the leader's group commit) is in that answer unless it took longer
//!   than the minimum age: this is the fence against late reports.
//! - Never while this worker runs a spill of the object's partition.
//! - A recorded object of a known shuffle is never garbage, nor an object whose writer is
//!   alive and not this worker (the writer may still report it).

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

/// Who wrote an object, as the sweeping worker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    /// This worker.
    Me,
    /// Another worker, active or draining: it may still report what it wrote.
    Alive,
    /// A worker the master no longer counts as active or draining.
    Gone,
}

/// What the sweep knows about one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepFacts {
    /// The master knew the object's shuffle when asked.
    pub shuffle_known: bool,
    /// The master had recorded this object as a segment when asked.
    pub recorded: bool,
    pub writer: Writer,
    /// When the object was last written (the store's clock), ms since the epoch.
    pub written_ms: i64,
    /// When the master was asked for the answer the other facts come from (this worker's
    /// clock), ms since the epoch.
    pub asked_ms: i64,
    /// This worker runs a spill of the object's partition.
    pub spilling: bool,
}

/// Whether the master's answer was asked for at least `min_age_ms` after the object was
/// written (see the module invariants).
fn fenced(f: &SweepFacts, min_age_ms: i64) -> bool {
    f.asked_ms.saturating_sub(f.written_ms) >= min_age_ms.max(0) && !f.spilling
}

/// Whether an object could be garbage once its record is known: only these cost the sweep a
/// question to the master. `now_ms` stands in for when it would ask.
pub fn needs_record(f: SweepFacts, now_ms: i64, min_age_ms: i64) -> bool {
    f.shuffle_known && f.writer != Writer::Alive && fenced(&SweepFacts { asked_ms: now_ms, ..f }, min_age_ms)
}

/// Whether a spilled object is garbage: never young or under a running spill of its
/// partition; always once its shuffle is gone; otherwise when the master never recorded it
/// and its writer is this worker or gone for good.
pub fn is_garbage(f: SweepFacts, min_age_ms: i64) -> bool {
    fenced(&f, min_age_ms) && (!f.shuffle_known || (!f.recorded && f.writer != Writer::Alive))
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

    fn facts(shuffle_known: bool, recorded: bool, writer: Writer, age_ms: i64) -> SweepFacts {
        SweepFacts {
            shuffle_known,
            recorded,
            writer,
            written_ms: 1_000_000,
            asked_ms: 1_000_000 + age_ms,
            spilling: false,
        }
    }

    #[test]
    fn garbage_rules() {
        let min = 60_000;
        let f = |known, recorded, writer, age| is_garbage(facts(known, recorded, writer, age), min);
        assert!(f(false, false, Writer::Alive, min), "removed shuffle");
        assert!(f(false, true, Writer::Alive, min), "removed shuffle, even if it was recorded");
        assert!(f(true, false, Writer::Gone, min), "unrecorded, writer gone");
        assert!(f(true, false, Writer::Me, min), "unrecorded, written here: this worker collects it");
        assert!(!f(true, false, Writer::Alive, min), "unrecorded, another live writer may still report it");
        assert!(!f(true, true, Writer::Gone, min), "recorded data is never garbage");
        assert!(!f(true, true, Writer::Me, min), "recorded data is never garbage");
        // The fence: an answer asked for too soon after the write may miss a report on its way.
        assert!(!f(false, false, Writer::Gone, min - 1), "young objects wait");
        assert!(!f(true, false, Writer::Me, min - 1), "a report of it may still be queued");
        assert!(!f(true, false, Writer::Me, -5), "written after the master was asked");
        let spilling = SweepFacts { spilling: true, ..facts(true, false, Writer::Me, min) };
        assert!(!is_garbage(spilling, min), "its partition's spill may be reporting it");
        assert!(!needs_record(spilling, i64::MAX, min));
        // Only candidates cost a question to the master.
        assert!(needs_record(facts(true, false, Writer::Me, 0), 1_000_000 + min, min));
        assert!(!needs_record(facts(true, false, Writer::Me, 0), 1_000_000 + min - 1, min));
        assert!(!needs_record(facts(true, false, Writer::Alive, 0), i64::MAX, min));
        assert!(!needs_record(facts(false, false, Writer::Gone, 0), i64::MAX, min), "no record needed");
    }

    fn any_facts() -> impl proptest::strategy::Strategy<Value = SweepFacts> {
        use proptest::prelude::*;
        let writer = prop_oneof![Just(Writer::Me), Just(Writer::Alive), Just(Writer::Gone)];
        (any::<bool>(), any::<bool>(), writer, any::<i64>(), any::<i64>(), any::<bool>()).prop_map(
            |(shuffle_known, recorded, writer, written_ms, asked_ms, spilling)| SweepFacts {
                shuffle_known,
                recorded,
                writer,
                written_ms,
                asked_ms,
                spilling,
            },
        )
    }

    proptest::proptest! {
        /// Whatever the facts: nothing asked about sooner than the minimum age after its write
        /// is garbage, nor anything under a running spill, nor a recorded object of a known
        /// shuffle, nor another live writer's object of a known shuffle; and an object that
        /// is garbage stays garbage when the master is asked later.
        #[test]
        fn garbage_is_always_fenced(f in any_facts(), min in 0i64..1_000_000_000, later in 0i64..1_000_000) {
            let g = is_garbage(f, min);
            if g {
                proptest::prop_assert!(f.asked_ms.saturating_sub(f.written_ms) >= min);
                proptest::prop_assert!(!f.spilling);
                proptest::prop_assert!(!f.shuffle_known || (!f.recorded && f.writer != Writer::Alive));
                let asked_later = SweepFacts { asked_ms: f.asked_ms.saturating_add(later), ..f };
                proptest::prop_assert!(is_garbage(asked_later, min));
            }
            // A candidate for a record question is garbage exactly when unrecorded, if the
            // master is asked no sooner than the candidate check assumed.
            if needs_record(f, f.asked_ms, min) {
                proptest::prop_assert_eq!(is_garbage(SweepFacts { recorded: false, ..f }, min), true);
                proptest::prop_assert_eq!(is_garbage(SweepFacts { recorded: true, ..f }, min), false);
            }
        }
    }
}
