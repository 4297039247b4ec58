//! Object-store access shared by workers (spilling) and readers (reading spilled segments).
//!
//! URLs: `file:///abs/dir` (the embedded default), `s3://bucket[/prefix]` (S3, MinIO and other
//! S3-protocol stores; endpoint, region and keys come from the standard `AWS_*` environment
//! variables, never flags), `memory://` (tests).
//!
//! Every store is opened wrapped in [`layers`]: retries of repeatable calls, per-call metrics,
//! and (in fault-test builds) failpoints.
//!
//! Invariants: a segment becomes visible only whole (one put below the part size, else a
//! multipart upload whose parts are all `part_size` bytes but the last, so stores with a 5 MiB
//! minimum part accept it); an upload that fails is aborted, leaving no partial object.

pub mod layers;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};

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

/// Streams one segment into the store. Chunks are handed to the upload as they are (owned
/// buffers, never copied); nothing is uploaded until a part's worth has arrived, so a small
/// segment is one plain PUT.
pub struct SegmentUpload {
    store: Arc<dyn ObjectStore>,
    path: Path,
    key: String,
    /// Chunks not yet handed to a multipart upload, and their bytes.
    pending: Vec<Bytes>,
    pending_len: usize,
    upload: Option<WriteMultipart>,
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
            pending: Vec::new(),
            pending_len: 0,
            upload: None,
            index: IndexBuilder::default(),
            part_size,
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
        self.pending.push(chunk);
        if self.pending_len >= self.part_size {
            if self.upload.is_none() {
                let up = self.store.put_multipart(&self.path).await?;
                self.upload = Some(WriteMultipart::new_with_chunk_size(up, self.part_size));
            }
            if let Some(up) = self.upload.as_mut() {
                for c in self.pending.drain(..) {
                    up.put(c);
                }
                self.pending_len = 0;
                if let Err(e) = up.wait_for_capacity(4).await {
                    self.abort().await;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    pub fn records_len(&self) -> u64 {
        self.index.records_len()
    }

    async fn abort(&mut self) {
        if let Some(up) = self.upload.take() {
            let _ = up.abort().await;
        }
    }

    /// Writes the index, completes the object and returns its reference.
    pub async fn finish(mut self) -> Result<SegmentRef, StoreError> {
        let index_offset = self.index.records_len();
        let (first_map, end_map) = self.index.maps().unwrap_or((0, 0));
        let tail = self.index.finish();
        let total_len = index_offset + tail.len() as u64;
        self.pending.push(Bytes::from(tail));
        match self.upload.take() {
            None => {
                let payload: PutPayload = std::mem::take(&mut self.pending).into_iter().collect();
                self.store.put(&self.path, payload).await?;
            }
            Some(mut up) => {
                for c in self.pending.drain(..) {
                    up.put(c);
                }
                up.finish().await?;
            }
        }
        Ok(SegmentRef {
            object_key: self.key,
            index_offset,
            total_len,
            first_map: MapId(first_map),
            end_map: MapId(end_map),
        })
    }
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

    #[test]
    fn urls_are_checked() {
        assert!(open_store("file://relative").is_err());
        assert!(open_store("gopher://x").is_err());
        assert!(open_store("s3://").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(open_store(&format!("file://{}", dir.path().join("objs").display())).is_ok());
    }
}
