//! Spilled segments: the object layout, in one place.
//!
//! A segment is one object holding part or all of one partition, written by the worker that
//! held it:
//!
//! ```text
//! records   StreamRecord*            in buffer key order: map, attempt, seq
//! index     IndexEntry* (28 B each)  map u32 | attempt u64 | offset u64 | len u64
//! trailer   16 B                     entries u32 | index crc32 u32 | magic "SHSEG001"
//! ```
//!
//! The master records `index_offset` (= bytes of records) and `total_len`, so a reader
//! fetches the index with one ranged read and then exactly the runs of the maps it needs.
//!
//! Object keys: `{app}/{shuffle_id}.{generation}/{partition}/{worker}@{nonce}.seg` under the
//! store's prefix. A whole shuffle is one key prefix, so deleting it is one listing.
//!
//! Invariants: a segment is complete or absent (single put, or a multipart upload that is only
//! visible once finished); the index covers every record, in order, without gaps.

use crate::batch::{StreamRecords, DEFAULT_MAX_BATCH_RAW};
use crate::error::ProtoError;
use crate::ids::{ShuffleKey, WorkerId};

pub const SEGMENT_MAGIC: &[u8; 8] = b"SHSEG001";
pub const INDEX_ENTRY_LEN: usize = 28;
pub const TRAILER_LEN: usize = 16;

/// The records of one (map, attempt) in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub map: u32,
    pub attempt: u64,
    pub offset: u64,
    pub len: u64,
}

/// Where a shuffle's segments live.
pub fn shuffle_dir(shuffle: &ShuffleKey) -> String {
    format!("{}/{}.{}", shuffle.app, shuffle.shuffle_id, shuffle.generation)
}

/// The key of a new segment. `nonce` makes keys of repeated spills unique.
pub fn segment_key(shuffle: &ShuffleKey, partition: u32, worker: &WorkerId, nonce: u64) -> String {
    format!("{}{nonce:016x}.seg", segment_prefix(shuffle, partition, worker))
}

/// The common prefix of every segment one worker writes for one partition.
pub fn segment_prefix(shuffle: &ShuffleKey, partition: u32, worker: &WorkerId) -> String {
    // '@' never occurs in a worker id, so one worker's prefix never covers another's.
    format!("{}/{partition:08}/{worker}@", shuffle_dir(shuffle))
}

/// The shuffle, partition and writing worker a segment key names; `None` for any other key.
pub fn parse_segment_key(key: &str) -> Option<(ShuffleKey, u32, WorkerId)> {
    let mut parts = key.rsplitn(4, '/');
    let file = parts.next()?;
    let partition: u32 = parts.next()?.parse().ok()?;
    let (sid, generation) = parts.next()?.split_once('.')?;
    let app = parts.next()?;
    let (worker, nonce) = file.strip_suffix(".seg")?.split_once('@')?;
    if nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let shuffle = ShuffleKey::new(crate::AppId::new(app).ok()?, sid.parse().ok()?, generation.parse().ok()?);
    Some((shuffle, partition, WorkerId::new(worker).ok()?))
}

/// Builds the index while records stream through.
#[derive(Debug, Default)]
pub struct IndexBuilder {
    entries: Vec<IndexEntry>,
    offset: u64,
}

impl IndexBuilder {
    /// Accounts for a chunk of encoded stream records about to be written.
    pub fn add_chunk(&mut self, chunk: &[u8]) -> Result<(), ProtoError> {
        let mut at = self.offset;
        for rec in StreamRecords::new(chunk, DEFAULT_MAX_BATCH_RAW + 64) {
            let rec = rec?;
            let len = crate::batch::StreamRecord::encoded_len(rec.batch.len()) as u64;
            match self.entries.last_mut() {
                Some(e) if e.map == rec.map && e.attempt == rec.attempt && e.offset + e.len == at => e.len += len,
                _ => self.entries.push(IndexEntry { map: rec.map, attempt: rec.attempt, offset: at, len }),
            }
            at += len;
        }
        self.offset = at;
        Ok(())
    }

    /// Bytes of records so far (the index offset once finished).
    pub fn records_len(&self) -> u64 {
        self.offset
    }

    pub fn maps(&self) -> Option<(u32, u32)> {
        let first = self.entries.iter().map(|e| e.map).min()?;
        let last = self.entries.iter().map(|e| e.map).max()?;
        Some((first, last.saturating_add(1)))
    }

    /// The index and trailer bytes.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * INDEX_ENTRY_LEN + TRAILER_LEN);
        for e in &self.entries {
            out.extend_from_slice(&e.map.to_le_bytes());
            out.extend_from_slice(&e.attempt.to_le_bytes());
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.len.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(SEGMENT_MAGIC);
        out
    }
}

/// Parses the index and trailer (the bytes from `index_offset` to the end of the object).
pub fn parse_index(tail: &[u8], index_offset: u64) -> Result<Vec<IndexEntry>, ProtoError> {
    if tail.len() < TRAILER_LEN {
        return Err(ProtoError::Truncated { need: TRAILER_LEN, have: tail.len() });
    }
    let (body, trailer) = tail.split_at(tail.len() - TRAILER_LEN);
    if &trailer[8..16] != SEGMENT_MAGIC {
        return Err(ProtoError::Invalid("segment trailer magic mismatch".into()));
    }
    let n = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as usize;
    let crc = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    if body.len() != n.saturating_mul(INDEX_ENTRY_LEN) {
        return Err(ProtoError::Invalid(format!("segment index of {} bytes for {n} entries", body.len())));
    }
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(ProtoError::Checksum { expected: crc, actual });
    }
    let mut out = Vec::with_capacity(n);
    let mut expect_offset = 0u64;
    for e in body.chunks_exact(INDEX_ENTRY_LEN) {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&e[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let entry = IndexEntry {
            map: u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
            attempt: u64_at(4),
            offset: u64_at(12),
            len: u64_at(20),
        };
        if entry.offset != expect_offset {
            return Err(ProtoError::Invalid("segment index has a gap or overlap".into()));
        }
        expect_offset =
            entry.offset.checked_add(entry.len).ok_or_else(|| ProtoError::Invalid("index overflow".into()))?;
        out.push(entry);
    }
    if expect_offset != index_offset {
        return Err(ProtoError::Invalid(format!("index covers {expect_offset} bytes, records are {index_offset}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::StreamRecord;

    #[test]
    fn index_round_trips_and_rejects_damage() {
        let mut chunk = Vec::new();
        for (map, attempt, seq) in [(0u32, 5u64, 0u32), (0, 5, 1), (2, 7, 0), (3, 1, 0), (3, 1, 1)] {
            StreamRecord::encode(map, attempt, seq, b"batch-bytes", &mut chunk);
        }
        let mut b = IndexBuilder::default();
        b.add_chunk(&chunk[..2 * 31]).unwrap();
        b.add_chunk(&chunk[2 * 31..]).unwrap();
        assert_eq!(b.records_len(), chunk.len() as u64);
        assert_eq!(b.maps(), Some((0, 4)));
        let tail = b.finish();
        let idx = parse_index(&tail, chunk.len() as u64).unwrap();
        assert_eq!(idx.len(), 3);
        assert_eq!(idx[0], IndexEntry { map: 0, attempt: 5, offset: 0, len: 62 });
        assert_eq!(idx[2].offset + idx[2].len, chunk.len() as u64);
        let mut bad = tail.clone();
        bad[3] ^= 1;
        assert!(matches!(parse_index(&bad, chunk.len() as u64), Err(ProtoError::Checksum { .. })));
        assert!(parse_index(&tail[1..], chunk.len() as u64).is_err());
        assert!(parse_index(&tail, chunk.len() as u64 + 1).is_err());
        assert!(parse_index(&[], 0).is_err());
    }

    #[test]
    fn keys_group_by_shuffle() {
        let s = ShuffleKey::new(crate::AppId::new("app-1").unwrap(), 4, 2);
        let k = segment_key(&s, 17, &WorkerId::new("w-0").unwrap(), 255);
        assert_eq!(k, "app-1/4.2/00000017/w-0@00000000000000ff.seg");
        let other = segment_key(&s, 17, &WorkerId::new("w-0-x").unwrap(), 1);
        assert!(!other.starts_with(&segment_prefix(&s, 17, &WorkerId::new("w-0").unwrap())));
        assert_eq!(parse_segment_key(&k), Some((s.clone(), 17, WorkerId::new("w-0").unwrap())));
        for bad in ["x", "a/b/c/d", "app-1/4.2/00000017/w-0.seg", "app-1/x.2/00000017/w@1.seg", "app-1/4.2/17/w@zz.seg"]
        {
            assert_eq!(parse_segment_key(bad), None, "{bad}");
        }
        assert!(k.starts_with(&shuffle_dir(&s)));
    }
}
