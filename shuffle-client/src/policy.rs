//! Pure decisions of the client: how records become batches, and what to do after a failed
//! push. No I/O, no clock: the caller supplies attempt counts and acts on the answers.

use std::time::Duration;

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
    /// Ask the master for the partition's current location, then send it there.
    Relocate,
    /// Give up: the map attempt fails.
    Fail,
}

/// Bounded retries with exponential backoff.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 12, base_delay: Duration::from_millis(20), max_delay: Duration::from_secs(2) }
    }
}

impl RetryPolicy {
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << attempt.min(16));
        exp.min(self.max_delay)
    }

    /// `code` is the failure's wire code; `unreachable` says the worker could not be reached.
    pub fn on_push_error(&self, attempt: u32, code: ErrorCode, unreachable: bool) -> PushAction {
        if attempt + 1 >= self.max_attempts {
            return PushAction::Fail;
        }
        if unreachable {
            // The first miss may be a blip; after that, move the partition.
            return if attempt == 0 { PushAction::RetryAfter(self.backoff(attempt)) } else { PushAction::Relocate };
        }
        match code.remedy() {
            Remedy::Relocate => PushAction::Relocate,
            Remedy::RetryLater => PushAction::RetryAfter(self.backoff(attempt)),
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
        assert_eq!(p.on_push_error(0, ErrorCode::Busy, false), PushAction::RetryAfter(Duration::from_millis(20)));
        assert_eq!(p.on_push_error(3, ErrorCode::Busy, false), PushAction::RetryAfter(Duration::from_millis(160)));
        assert_eq!(p.on_push_error(10, ErrorCode::Busy, false), PushAction::RetryAfter(Duration::from_secs(2)));
        assert_eq!(p.on_push_error(0, ErrorCode::StaleEpoch, false), PushAction::Relocate);
        assert_eq!(p.on_push_error(0, ErrorCode::Timeout, true), PushAction::RetryAfter(Duration::from_millis(20)));
        assert_eq!(p.on_push_error(1, ErrorCode::Timeout, true), PushAction::Relocate);
        assert_eq!(p.on_push_error(0, ErrorCode::ShuffleNotWriting, false), PushAction::Fail);
        assert_eq!(p.on_push_error(0, ErrorCode::Malformed, false), PushAction::Fail);
        assert_eq!(p.on_push_error(11, ErrorCode::Busy, false), PushAction::Fail);
        // A full disk on one worker: go elsewhere; masters out of reach: wait.
        assert_eq!(p.on_push_error(0, ErrorCode::DiskFull, false), PushAction::Relocate);
        assert_eq!(
            p.on_push_error(0, ErrorCode::Unavailable, false),
            PushAction::RetryAfter(Duration::from_millis(20))
        );
        assert_eq!(p.on_push_error(0, ErrorCode::Unauthorized, false), PushAction::Fail);
    }
}
