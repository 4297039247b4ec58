//! Object-store access shared by workers (spilling) and readers (reading spilled segments).
//!
//! URLs: `file:///abs/dir` (the embedded default), `s3://bucket[/prefix]` (S3, MinIO and other
//! S3-protocol stores; endpoint, region and keys come from the standard `AWS_*` environment
//! variables, never flags), `memory://` (tests).
//!
//! Every store is opened wrapped in [`layers`]: retries of repeatable calls, per-call metrics,
//! and (in fault-test builds) failpoints.
//!
//! Invariants:
//! - A segment becomes visible only whole: one put below the part size, else a multipart
//!   upload whose parts are all `part_size` bytes but the last, so stores with a 5 MiB minimum
//!   part accept it.
//! - A multipart upload that does not complete is aborted on every path: a failed part, a
//!   failed completion, a caller that gives up ([`SegmentUpload::abort`]) or drops the upload
//!   (aborted from a spawned task), so no billed, invisible upload is left behind by a live
//!   process. A process killed mid-upload leaves one: the bucket's lifecycle rule removes it
//!   (see docs/operations.md).
//! - A single-put segment is created, never overwritten (`PutMode::Create`, where the backend
//!   implements it): a name that somehow repeats fails instead of replacing recorded data.
//!   Multipart completion cannot be made conditional through `object_store`; names come from
//!   random nonces ([`crate::segment::segment_key`]) so they do not repeat.

pub mod layers;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutMode, PutOptions, PutPayload};

use crate::error::ProtoError;
use crate::messages::SegmentRef;
use crate::segment::{parse_index, IndexBuilder, IndexEntry};
use crate::MapId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("segment: {0}")]
    Segment(#[from] ProtoError),
}

impl StoreError {
    /// Store failures are worth retrying; a malformed segment is not.
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Store(e) if !matches!(e, object_store::Error::NotFound { .. }))
    }
}

/// Opens the store a URL names, wrapped in [`layers`]; `observer` gets every call's latency
/// and outcome.
pub fn open_store_observed(
    url: &str,
    observer: Option<Arc<dyn layers::StoreObserver>>,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let mut store = open_base(url)?;
    if cfg!(feature = "failpoints") {
        store = Arc::new(layers::FaultyStore::new(store));
    }
    if let Some(o) = observer {
        store = Arc::new(layers::Instrumented::new(store, o));
    }
    Ok(Arc::new(layers::Retrying::new(store, crate::retry::Backoff::STORE_CALL)))
}

/// Opens the store a URL names, wrapped in [`layers`] (no metrics).
pub fn open_store(url: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    open_store_observed(url, None)
}

/// The store a URL names, unwrapped.
fn open_base(url: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let bad = |reason: &str| StoreError::Url { url: url.to_string(), reason: reason.to_string() };
    if let Some(dir) = url.strip_prefix("file://") {
        if !dir.starts_with('/') {
            return Err(bad("file URLs need an absolute path (file:///dir)"));
        }
        std::fs::create_dir_all(dir).map_err(|e| bad(&e.to_string()))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| bad(&e.to_string()))?;
        return Ok(Arc::new(fs));
    }
    if url == "memory://" {
        return Ok(Arc::new(object_store::memory::InMemory::new()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        // Quick HTTP-level retries (5xx, throttling, timeouts) here; longer outages are the
        // job of the layers above and of the callers' own retries.
        let http_retries = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: std::time::Duration::from_millis(100),
                max_backoff: std::time::Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(30),
        };
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(http_retries);
        if let Ok(ep) = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")) {
            b = b.with_allow_http(ep.starts_with("http://")).with_endpoint(ep);
        }
        let s3 = b.build().map_err(|e| bad(&e.to_string()))?;
        return Ok(if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        });
    }
    Err(bad("scheme must be file://, s3:// or memory://"))
}

/// Parts of one upload in flight at most: each holds `part_size` bytes of memory.
const PARTS_IN_FLIGHT: usize = 4;

/// A multipart upload under way and its parts in flight.
struct Parts {
    upload: Box<dyn MultipartUpload>,
    in_flight: tokio::task::JoinSet<object_store::Result<()>>,
}

impl Parts {
    /// Waits until at most `max` parts are in flight; the first failed part's error.
    async fn wait_for(&mut self, max: usize) -> object_store::Result<()> {
        while self.in_flight.len() > max {
            match self.in_flight.join_next().await {
                Some(Ok(r)) => r?,
                Some(Err(e)) => return Err(object_store::Error::JoinError { source: e }),
                None => break,
            }
        }
        Ok(())
    }

    async fn abort(mut self) {
        self.in_flight.shutdown().await;
        if let Err(e) = self.upload.abort().await {
            tracing::warn!("aborting a multipart upload failed (the bucket lifecycle rule removes it): {e}");
        }
    }
}

/// Streams one segment into the store. Chunks are handed to the upload as they are (owned
/// buffers, never copied); nothing is uploaded until a part's worth has arrived, so a small
/// segment is one plain PUT. Every way out but a successful [`SegmentUpload::finish`] aborts
/// a multipart upload it started (see the module invariants).
pub struct SegmentUpload {
    store: Arc<dyn ObjectStore>,
    path: Path,
    key: String,
    /// Chunks not yet handed to a part, and their bytes.
    pending: std::collections::VecDeque<Bytes>,
    pending_len: usize,
    parts: Option<Parts>,
    index: IndexBuilder,
    part_size: usize,
}

impl SegmentUpload {
    /// `part_size` is at least 5 MiB for S3-protocol stores.
    pub fn new(store: Arc<dyn ObjectStore>, key: String, part_size: usize) -> Self {
        Self {
            store,
            path: Path::from(key.as_str()),
            key,
            pending: Default::default(),
            pending_len: 0,
            parts: None,
            index: IndexBuilder::default(),
            part_size: part_size.max(1),
        }
    }

    /// Adds encoded stream records (copied; [`SegmentUpload::write_owned`] takes them as they are).
    pub async fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.write_owned(Bytes::copy_from_slice(chunk)).await
    }

    /// Adds encoded stream records without copying them.
    pub async fn write_owned(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.index.add_chunk(&chunk)?;
        self.pending_len += chunk.len();
        self.pending.push_back(chunk);
        if let Err(e) = self.send_parts(false).await {
            self.abort().await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Hands every whole part pending (and with `last`, the rest) to the upload, started
    /// here if need be, and waits for room among the parts in flight.
    async fn send_parts(&mut self, last: bool) -> object_store::Result<()> {
        while self.pending_len >= self.part_size || (last && self.pending_len > 0) {
            if self.parts.is_none() {
                let upload = self.store.put_multipart(&self.path).await?;
                self.parts = Some(Parts { upload, in_flight: Default::default() });
            }
            let part = self.take_part();
            if let Some(p) = self.parts.as_mut() {
                let put = p.upload.put_part(part);
                p.in_flight.spawn(put);
                p.wait_for(PARTS_IN_FLIGHT).await?;
            }
        }
        Ok(())
    }

    /// The next `part_size` bytes pending (all of them if fewer), split without copying.
    fn take_part(&mut self) -> PutPayload {
        let mut want = self.part_size.min(self.pending_len);
        let mut out = Vec::new();
        while want > 0 {
            let Some(mut front) = self.pending.pop_front() else { break };
            if front.len() > want {
                self.pending.push_front(front.split_off(want));
            }
            want -= front.len();
            self.pending_len -= front.len();
            out.push(front);
        }
        out.into_iter().collect()
    }

    pub fn records_len(&self) -> u64 {
        self.index.records_len()
    }

    /// Gives the upload up: a multipart upload it started is aborted (its parts are billed
    /// until then). Call it on every error path before dropping; dropping aborts too, later.
    pub async fn abort(&mut self) {
        if let Some(parts) = self.parts.take() {
            parts.abort().await;
        }
    }

    /// Writes the index, completes the object and returns its reference. A multipart upload
    /// that fails here is aborted.
    pub async fn finish(mut self) -> Result<SegmentRef, StoreError> {
        let index_offset = self.index.records_len();
        let (first_map, end_map) = self.index.maps().unwrap_or((0, 0));
        let tail = self.index.finish();
        let total_len = index_offset + tail.len() as u64;
        self.pending_len += tail.len();
        self.pending.push_back(Bytes::from(tail));
        if self.parts.is_none() {
            let payload: PutPayload = std::mem::take(&mut self.pending).into_iter().collect();
            self.pending_len = 0;
            put_new(&*self.store, &self.path, payload).await?;
        } else {
            let completed = async {
                self.send_parts(true).await?;
                match self.parts.as_mut() {
                    Some(p) => {
                        p.wait_for(0).await?;
                        p.upload.complete().await.map(|_| ())
                    }
                    None => Ok(()),
                }
            }
            .await;
            if let Err(e) = completed {
                self.abort().await;
                return Err(e.into());
            }
            self.parts = None;
        }
        Ok(SegmentRef {
            object_key: std::mem::take(&mut self.key),
            index_offset,
            total_len,
            first_map: MapId(first_map),
            end_map: MapId(end_map),
        })
    }
}

impl Drop for SegmentUpload {
    /// A caller that returned early (an error, a cancelled task) still aborts its upload.
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(parts.abort());
                }
                Err(_) => {
                    tracing::warn!(key = %self.key, "a multipart upload dropped outside a runtime is left to the bucket lifecycle rule")
                }
            }
        }
    }
}

/// Puts a new object: create-only where the backend implements it (a backend that does not,
/// or is configured not to, gets a plain put; segment names do not repeat anyway). Transient
/// failures are tried again here, since the store layers leave conditional puts alone.
async fn put_new(store: &dyn ObjectStore, path: &Path, payload: PutPayload) -> object_store::Result<()> {
    let tries = std::sync::atomic::AtomicU32::new(0);
    let once = || async {
        let retried = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0;
        let create = PutOptions { mode: PutMode::Create, ..Default::default() };
        match store.put_opts(path, payload.clone(), create).await {
            Ok(_) => Ok(()),
            // Only this upload writes this (random) name: a retry that finds it means an earlier
            // try stored it whole and its answer was lost.
            Err(object_store::Error::AlreadyExists { .. }) if retried => Ok(()),
            Err(object_store::Error::NotImplemented | object_store::Error::NotSupported { .. }) => {
                store.put(path, payload.clone()).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    };
    crate::retry::retry(&crate::retry::Backoff::STORE_CALL, once, layers::transient, |e, d| {
        tracing::debug!("creating a segment failed, retrying in {d:?}: {e}")
    })
    .await
}

/// Reads a segment's index.
pub async fn read_index(store: &dyn ObjectStore, seg: &SegmentRef) -> Result<Vec<IndexEntry>, StoreError> {
    let path = Path::from(seg.object_key.as_str());
    let tail = store.get_range(&path, seg.index_offset..seg.total_len).await?;
    Ok(parse_index(&tail, seg.index_offset)?)
}

/// Reads the stream records of maps `[start_map, end_map)` whose attempt `keep` accepts,
/// one ranged read per run.
pub async fn read_segment(
    store: &dyn ObjectStore,
    seg: &SegmentRef,
    start_map: u32,
    end_map: u32,
    keep: impl Fn(u32, u64) -> bool,
) -> Result<Vec<Bytes>, StoreError> {
    if seg.end_map.0 <= start_map || seg.first_map.0 >= end_map {
        return Ok(Vec::new());
    }
    let index = read_index(store, seg).await?;
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for e in index.iter().filter(|e| e.map >= start_map && e.map < end_map && keep(e.map, e.attempt)) {
        match ranges.last_mut() {
            Some(r) if r.end == e.offset => r.end += e.len,
            _ => ranges.push(e.offset..e.offset + e.len),
        }
    }
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    let path = Path::from(seg.object_key.as_str());
    Ok(store.get_ranges(&path, &ranges).await?)
}

/// Reads a segment's selected records (maps `[start_map, end_map)` whose attempt `keep`
/// accepts) as chunks of whole stream records, one ranged read of at most `chunk_bytes` at a
/// time: a reader holds one chunk and at most one partial record, whatever the partition's
/// size. Transient store errors are retried ([`Backoff::STORE_READ`]).
pub struct SegmentChunks {
    store: Arc<dyn ObjectStore>,
    path: Path,
    ranges: std::collections::VecDeque<Range<u64>>,
    /// The start of a record cut by the previous read.
    carry: Vec<u8>,
    /// Whole records read together with the end of a cut one, handed over next.
    pending: Option<Bytes>,
    chunk_bytes: u64,
}

impl SegmentChunks {
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        seg: &SegmentRef,
        start_map: u32,
        end_map: u32,
        keep: impl Fn(u32, u64) -> bool,
        chunk_bytes: usize,
    ) -> Result<SegmentChunks, StoreError> {
        let mut ranges: std::collections::VecDeque<Range<u64>> = std::collections::VecDeque::new();
        if seg.end_map.0 > start_map && seg.first_map.0 < end_map {
            let index = retrying(|| read_index(&*store, seg)).await?;
            for e in index.iter().filter(|e| e.map >= start_map && e.map < end_map && keep(e.map, e.attempt)) {
                match ranges.back_mut() {
                    Some(r) if r.end == e.offset => r.end += e.len,
                    _ => ranges.push_back(e.offset..e.offset + e.len),
                }
            }
        }
        let path = Path::from(seg.object_key.as_str());
        Ok(SegmentChunks {
            store,
            path,
            ranges,
            carry: Vec::new(),
            pending: None,
            chunk_bytes: chunk_bytes.max(1) as u64,
        })
    }

    /// The next chunk of whole records, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, StoreError> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        loop {
            let Some(r) = self.ranges.front().cloned() else {
                if !self.carry.is_empty() {
                    return Err(ProtoError::Invalid("a segment range ends inside a record".into()).into());
                }
                return Ok(None);
            };
            let end = r.end.min(r.start.saturating_add(self.chunk_bytes));
            let (store, path) = (self.store.clone(), self.path.clone());
            let got = retrying(|| {
                let (store, path) = (store.clone(), path.clone());
                async move { Ok::<_, StoreError>(store.get_range(&path, r.start..end).await?) }
            })
            .await?;
            if got.len() as u64 != end - r.start {
                return Err(ProtoError::Truncated { need: (end - r.start) as usize, have: got.len() }.into());
            }
            match self.ranges.front_mut() {
                Some(front) if end < front.end => front.start = end,
                _ => {
                    self.ranges.pop_front();
                }
            }
            // Only the record cut by the previous read is copied (to join its two halves);
            // every whole record after it is handed over in place.
            let mut got = got;
            let mut joined = None;
            if !self.carry.is_empty() {
                let need = record_remainder(&self.carry, &got)?;
                if got.len() < need {
                    self.carry.extend_from_slice(&got);
                    continue;
                }
                self.carry.extend_from_slice(&got[..need]);
                joined = Some(Bytes::from(std::mem::take(&mut self.carry)));
                got = got.slice(need..);
            }
            let whole = whole_records_len(&got)?;
            self.carry.extend_from_slice(&got[whole..]);
            let rest = (whole > 0).then(|| got.slice(..whole));
            match (joined, rest) {
                (Some(j), Some(r)) => {
                    self.pending = Some(r);
                    return Ok(Some(j));
                }
                (Some(c), None) | (None, Some(c)) => return Ok(Some(c)),
                (None, None) => {}
            }
        }
    }
}

/// How many bytes of `next` complete the record whose start is `carry`.
fn record_remainder(carry: &[u8], next: &[u8]) -> Result<usize, StoreError> {
    use crate::batch::{DEFAULT_MAX_BATCH_RAW, STREAM_RECORD_HEADER_LEN};
    let mut header = [0u8; STREAM_RECORD_HEADER_LEN];
    let have = carry.len().min(STREAM_RECORD_HEADER_LEN);
    header[..have].copy_from_slice(&carry[..have]);
    let from_next = (STREAM_RECORD_HEADER_LEN - have).min(next.len());
    header[have..have + from_next].copy_from_slice(&next[..from_next]);
    if have + from_next < STREAM_RECORD_HEADER_LEN {
        // Not even the header is complete: everything `next` holds belongs to the record.
        return Ok(usize::MAX);
    }
    let len = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
    if len > DEFAULT_MAX_BATCH_RAW + 64 {
        return Err(ProtoError::TooLarge {
            what: "stream record",
            len: len.into(),
            max: (DEFAULT_MAX_BATCH_RAW + 64).into(),
        }
        .into());
    }
    Ok((STREAM_RECORD_HEADER_LEN + len as usize).saturating_sub(carry.len()))
}

/// The length of the whole stream records at the start of `buf`; a record whose header claims
/// more than a batch may hold is corrupt.
fn whole_records_len(buf: &[u8]) -> Result<usize, StoreError> {
    use crate::batch::{StreamRecord, DEFAULT_MAX_BATCH_RAW};
    let mut at = 0;
    loop {
        match StreamRecord::parse(&buf[at..], DEFAULT_MAX_BATCH_RAW + 64) {
            Ok((rec, _)) => at += StreamRecord::encoded_len(rec.batch.len()),
            Err(ProtoError::Truncated { .. }) => return Ok(at),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs `f` until it succeeds, fails for good, or [`Backoff::STORE_READ`] gives up.
async fn retrying<T, F, Fut>(f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    crate::retry::retry(&crate::retry::Backoff::STORE_READ, f, StoreError::retryable, |e, d| {
        tracing::debug!("object store read failed, retrying in {d:?}: {e}")
    })
    .await
}

/// Deletes every object under a shuffle's prefix.
pub async fn delete_prefix(store: &dyn ObjectStore, prefix: &str) -> Result<usize, StoreError> {
    use futures::TryStreamExt;
    let prefix = Path::from(prefix);
    let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    for o in &objects {
        match store.delete(&o.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(objects.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{StreamRecord, StreamRecords};

    /// Chunks of any size give back exactly the records a whole read gives, each chunk whole
    /// records, none larger than the chunk size plus one record.
    #[tokio::test]
    async fn chunked_reads_hold_whole_records_and_match_a_whole_read() {
        let store = open_store("memory://").unwrap();
        let recs = records(&[(0, 1), (1, 9), (1, 10), (4, 2)], 40, 700);
        let mut up = SegmentUpload::new(store.clone(), "a/1.0/00000001/w-1.seg".into(), 1 << 20);
        up.write_chunk(&recs).await.unwrap();
        let seg = up.finish().await.unwrap();
        for (start, end, keep) in [(0, 10, None), (1, 2, Some(10u64)), (5, 9, None)] {
            let keep = move |_: u32, a: u64| keep.is_none_or(|k| k == a);
            let whole: Vec<u8> = read_segment(&*store, &seg, start, end, keep).await.unwrap().concat();
            for chunk in [1usize, 100, 719, 720, 5000, 1 << 20] {
                let mut c = SegmentChunks::open(store.clone(), &seg, start, end, keep, chunk).await.unwrap();
                let mut got = Vec::new();
                while let Some(b) = c.next().await.unwrap() {
                    assert!(b.len() <= chunk.max(StreamRecord::encoded_len(700)) + StreamRecord::encoded_len(700));
                    assert_eq!(
                        StreamRecords::new(&b, 1 << 20).map(|r| r.unwrap().batch.len()).sum::<usize>()
                            + 20 * StreamRecords::new(&b, 1 << 20).count(),
                        b.len()
                    );
                    got.extend_from_slice(&b);
                }
                assert_eq!(got, whole, "maps {start}..{end}, chunk {chunk}");
            }
        }
    }

    fn records(maps: &[(u32, u64)], per: u32, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (m, a) in maps {
            for seq in 0..per {
                StreamRecord::encode(*m, *a, seq, &vec![(*m as u8) ^ (seq as u8); size], &mut out);
            }
        }
        out
    }

    async fn round_trip(part_size: usize) {
        let store = open_store("memory://").unwrap();
        let recs = records(&[(0, 1), (1, 9), (1, 10), (4, 2)], 50, 1000);
        let mut up = SegmentUpload::new(store.clone(), "a/1.0/00000001/w-1.seg".into(), part_size);
        // Chunks hold whole records, about 30 KB each.
        let mut at = 0;
        while at < recs.len() {
            let mut end = at;
            for r in StreamRecords::new(&recs[at..], 1 << 20) {
                end += StreamRecord::encoded_len(r.unwrap().batch.len());
                if end - at > 30_000 {
                    break;
                }
            }
            up.write_chunk(&recs[at..end]).await.unwrap();
            at = end;
        }
        let seg = up.finish().await.unwrap();
        assert_eq!(seg.index_offset, recs.len() as u64);
        assert_eq!((seg.first_map.0, seg.end_map.0), (0, 5));
        let all: Vec<u8> = read_segment(&*store, &seg, 0, 10, |_, _| true).await.unwrap().concat();
        assert_eq!(all, recs);
        // Map 1, attempt 10 only.
        let some: Vec<u8> = read_segment(&*store, &seg, 1, 2, |_, a| a == 10).await.unwrap().concat();
        let got: Vec<_> = StreamRecords::new(&some, 1 << 20).map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), 50);
        assert!(got.iter().all(|r| r.map == 1 && r.attempt == 10));
        assert!(read_segment(&*store, &seg, 5, 9, |_, _| true).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn segments_round_trip_with_single_put_and_multipart() {
        round_trip(64 << 20).await;
        round_trip(40_000).await;
    }

    /// An in-memory store whose multipart uploads fail their `fail_part`th part (1-based;
    /// 0: none) and whose completions fail with `fail_complete`; counts aborts.
    #[derive(Debug, Default)]
    struct FailingUploads {
        inner: object_store::memory::InMemory,
        fail_part: u32,
        fail_complete: bool,
        aborted: Arc<std::sync::atomic::AtomicU32>,
    }

    #[derive(Debug)]
    struct FailingUpload {
        inner: Box<dyn MultipartUpload>,
        parts: u32,
        fail_part: u32,
        fail_complete: bool,
        aborted: Arc<std::sync::atomic::AtomicU32>,
    }

    fn injected() -> object_store::Error {
        object_store::Error::Generic { store: "test", source: "injected".into() }
    }

    impl std::fmt::Display for FailingUploads {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("FailingUploads")
        }
    }

    #[async_trait::async_trait]
    impl MultipartUpload for FailingUpload {
        fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
            self.parts += 1;
            if self.parts == self.fail_part {
                return Box::pin(async { Err(injected()) });
            }
            self.inner.put_part(data)
        }
        async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
            if self.fail_complete {
                return Err(injected());
            }
            self.inner.complete().await
        }
        async fn abort(&mut self) -> object_store::Result<()> {
            self.aborted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.abort().await
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for FailingUploads {
        async fn put_opts(
            &self,
            l: &Path,
            p: PutPayload,
            o: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.inner.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            Ok(Box::new(FailingUpload {
                inner: self.inner.put_multipart_opts(l, o).await?,
                parts: 0,
                fail_part: self.fail_part,
                fail_complete: self.fail_complete,
                aborted: self.aborted.clone(),
            }))
        }
        async fn get_opts(
            &self,
            l: &Path,
            o: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(l, o).await
        }
        async fn delete(&self, l: &Path) -> object_store::Result<()> {
            self.inner.delete(l).await
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    /// Writes `parts` parts' worth of records (plus a bit) through an upload of 1000-byte parts.
    async fn write_parts(up: &mut SegmentUpload, parts: usize) -> Result<(), StoreError> {
        let recs = records(&[(0, 1)], (parts as u32 * 1000 + 500) / 120, 100);
        up.write_chunk(&recs).await
    }

    async fn eventually_aborted(aborted: &std::sync::atomic::AtomicU32) -> u32 {
        for _ in 0..200 {
            if aborted.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        aborted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A part that fails while the segment is finished (object_store's own `finish` returns
    /// such an error without aborting), a failed completion, a part failing mid-write, and a
    /// writer that gives up or just drops the upload (a scan error in the spill): each aborts
    /// the multipart upload exactly once and leaves no object.
    #[tokio::test]
    async fn every_failed_or_abandoned_upload_is_aborted() {
        let key = "a/1.0/00000001/w-1@01.seg";
        let cases: [(&str, u32, bool); 5] = [
            ("last part fails in finish", 4, false),
            ("completion fails", 0, true),
            ("a part fails mid-write", 1, false),
            ("the writer gives up", 0, false),
            ("the writer drops it", 0, false),
        ];
        for (what, fail_part, fail_complete) in cases {
            let failing = Arc::new(FailingUploads { fail_part, fail_complete, ..Default::default() });
            let aborted = failing.aborted.clone();
            let mut up = SegmentUpload::new(failing.clone(), key.into(), 1000);
            let wrote = write_parts(&mut up, 3).await;
            match what {
                "a part fails mid-write" => {
                    // The failure surfaces at a later write or at the finish, whichever sees it.
                    let rest = async {
                        wrote?;
                        write_parts(&mut up, 6).await?;
                        up.finish().await
                    };
                    assert!(rest.await.is_err(), "{what}");
                }
                "the writer gives up" => {
                    wrote.unwrap();
                    up.abort().await;
                }
                "the writer drops it" => {
                    wrote.unwrap();
                    drop(up);
                }
                _ => {
                    wrote.unwrap();
                    assert!(up.finish().await.is_err(), "{what}");
                }
            }
            assert_eq!(eventually_aborted(&aborted).await, 1, "{what}: aborted once");
            assert!(failing.head(&Path::from(key)).await.is_err(), "{what}: no object");
        }
        // And a good upload is not aborted.
        let failing = Arc::new(FailingUploads::default());
        let mut up = SegmentUpload::new(failing.clone(), key.into(), 1000);
        write_parts(&mut up, 3).await.unwrap();
        up.finish().await.unwrap();
        assert_eq!(failing.aborted.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(failing.head(&Path::from(key)).await.is_ok());
    }

    /// A small segment is created, never overwritten: a second upload under a recorded
    /// segment's name fails and leaves the recorded one as it was.
    #[tokio::test]
    async fn a_segment_never_overwrites_an_object() {
        let store = open_store("memory://").unwrap();
        let key = "a/1.0/00000001/w-1@01.seg";
        let mut first = SegmentUpload::new(store.clone(), key.into(), 1 << 20);
        first.write_chunk(&records(&[(0, 1)], 3, 100)).await.unwrap();
        let recorded = first.finish().await.unwrap();
        let mut second = SegmentUpload::new(store.clone(), key.into(), 1 << 20);
        second.write_chunk(&records(&[(5, 9)], 7, 10)).await.unwrap();
        let err = second.finish().await.unwrap_err();
        assert!(matches!(err, StoreError::Store(object_store::Error::AlreadyExists { .. })), "{err}");
        let maps: Vec<u32> =
            StreamRecords::new(&read_segment(&*store, &recorded, 0, 10, |_, _| true).await.unwrap().concat(), 1 << 20)
                .map(|r| r.unwrap().map)
                .collect();
        assert_eq!(maps, vec![0, 0, 0]);
    }

    #[test]
    fn urls_are_checked() {
        assert!(open_store("file://relative").is_err());
        assert!(open_store("gopher://x").is_err());
        assert!(open_store("s3://").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(open_store(&format!("file://{}", dir.path().join("objs").display())).is_ok());
    }
}
