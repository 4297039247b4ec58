//! Pure decisions of the client: how records become batches, and what to do after a failed
//! push. No I/O, no clock: the caller supplies attempt counts and acts on the answers.

use std::time::Duration;

use shuffle_proto::retry::Backoff;
use shuffle_proto::{ErrorCode, Remedy};

/// Per-partition staging buffers that hand out a batch once a partition holds `batch_bytes`.
///
/// Invariant: bytes come out in the order they went in, per partition; memory held is at most
/// `partitions * batch_bytes` plus one record.
#[derive(Debug)]
pub struct PartitionBuffers {
    bufs: Vec<Vec<u8>>,
    batch_bytes: usize,
    held: usize,
}

impl PartitionBuffers {
    pub fn new(partitions: u32, batch_bytes: usize) -> Self {
        Self { bufs: (0..partitions).map(|_| Vec::new()).collect(), batch_bytes: batch_bytes.max(1), held: 0 }
    }

    /// Appends serialized records; returns a full batch when the partition reached the size.
    pub fn append(&mut self, partition: u32, bytes: &[u8]) -> Option<Vec<u8>> {
        let buf = self.bufs.get_mut(partition as usize)?;
        if buf.capacity() == 0 {
            buf.reserve(self.batch_bytes.min(1 << 20));
        }
        buf.extend_from_slice(bytes);
        self.held += bytes.len();
        if buf.len() >= self.batch_bytes {
            self.held -= buf.len();
            return Some(std::mem::take(buf));
        }
        None
    }

    /// Takes every non-empty buffer (at the end of the map).
    pub fn drain(&mut self) -> Vec<(u32, Vec<u8>)> {
        self.held = 0;
        self.bufs
            .iter_mut()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(p, b)| (p as u32, std::mem::take(b)))
            .collect()
    }

    pub fn held_bytes(&self) -> usize {
        self.held
    }

    pub fn partitions(&self) -> u32 {
        self.bufs.len() as u32
    }
}

/// What to do after a push failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushAction {
    /// Send the same batch to the same worker after a pause.
    RetryAfter(Duration),
    /// Ask the master for the partition's current location, then send it there (after the
    /// pause, if the master has nowhere else yet).
    Relocate(Duration),
    /// Give up: the map attempt fails.
    Fail,
}

/// Bounded retries of one batch: [`Backoff::PUSH`] unless configured otherwise.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { backoff: Backoff::PUSH }
    }
}

impl RetryPolicy {
    /// `attempt` (from 0) failed after `elapsed` since the first try, with the wire `code`;
    /// `unreachable` says the worker could not be reached.
    pub fn on_push_error(&self, attempt: u32, elapsed: Duration, code: ErrorCode, unreachable: bool) -> PushAction {
        let Some(pause) = self.backoff.next_delay(attempt.saturating_add(1), elapsed) else {
            return PushAction::Fail;
        };
        if unreachable {
            // The first miss may be a blip; after that, move the partition.
            return if attempt == 0 { PushAction::RetryAfter(pause) } else { PushAction::Relocate(pause) };
        }
        match code.remedy() {
            Remedy::Relocate => PushAction::Relocate(pause),
            Remedy::RetryLater => PushAction::RetryAfter(pause),
            Remedy::Recompute | Remedy::Fail => PushAction::Fail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_emit_full_batches_in_order_and_drain_the_rest() {
        let mut b = PartitionBuffers::new(3, 10);
        assert_eq!(b.append(1, b"abcd"), None);
        assert_eq!(b.append(1, b"efgh"), None);
        assert_eq!(b.held_bytes(), 8);
        assert_eq!(b.append(1, b"ij").as_deref(), Some(&b"abcdefghij"[..]));
        assert_eq!(b.held_bytes(), 0);
        assert_eq!(b.append(7, b"x"), None, "out-of-range partitions are refused by the caller");
        b.append(0, b"0");
        b.append(2, b"22");
        assert_eq!(b.drain(), vec![(0, b"0".to_vec()), (2, b"22".to_vec())]);
        assert!(b.drain().is_empty());
    }

    #[test]
    fn retries_back_off_relocate_and_give_up() {
        let p = RetryPolicy::default();
        const Z: Duration = Duration::ZERO;
        let ms = Duration::from_millis;
        assert_eq!(p.on_push_error(0, Z, ErrorCode::Busy, false), PushAction::RetryAfter(Duration::from_millis(20)));
        assert_eq!(p.on_push_error(3, Z, ErrorCode::Busy, false), PushAction::RetryAfter(Duration::from_millis(160)));
        assert_eq!(p.on_push_error(10, Z, ErrorCode::Busy, false), PushAction::RetryAfter(Duration::from_secs(2)));
        assert_eq!(p.on_push_error(0, Z, ErrorCode::StaleEpoch, false), PushAction::Relocate(ms(20)));
        assert_eq!(p.on_push_error(0, Z, ErrorCode::Timeout, true), PushAction::RetryAfter(Duration::from_millis(20)));
        assert_eq!(p.on_push_error(1, Z, ErrorCode::Timeout, true), PushAction::Relocate(ms(40)));
        assert_eq!(p.on_push_error(0, Z, ErrorCode::ShuffleNotWriting, false), PushAction::Fail);
        assert_eq!(p.on_push_error(0, Z, ErrorCode::Malformed, false), PushAction::Fail);
        assert_eq!(p.on_push_error(11, Z, ErrorCode::Busy, false), PushAction::Fail);
        // A full disk on one worker: go elsewhere; masters out of reach: wait.
        assert_eq!(p.on_push_error(0, Z, ErrorCode::DiskFull, false), PushAction::Relocate(ms(20)));
        assert_eq!(
            p.on_push_error(0, Z, ErrorCode::Unavailable, false),
            PushAction::RetryAfter(Duration::from_millis(20))
        );
        assert_eq!(p.on_push_error(0, Z, ErrorCode::Unauthorized, false), PushAction::Fail);
        let past = p.backoff.deadline;
        assert_eq!(p.on_push_error(0, past, ErrorCode::Busy, false), PushAction::Fail, "past the deadline");
    }
}
