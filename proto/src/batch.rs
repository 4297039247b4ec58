//! Batches: the unit a map task pushes, and stream records: the unit a reader receives.
//!
//! Batch layout (little-endian), [`BATCH_HEADER_LEN`] bytes of header then the data:
//!
//! ```text
//!  0      codec        0 = none, 1 = lz4 block
//!  1      flags        bit 0: sealed (encrypted by the application, see [`crate::seal`])
//!  2..4   reserved     zero
//!  4..8   raw_len      u32, uncompressed length
//!  8..12  data_len     u32, bytes that follow the header
//! 12..16  crc32        CRC32 (IEEE) of the uncompressed bytes; of `data` when sealed
//! 16..    data         (sealed: nonce, the compressed bytes encrypted, tag)
//! ```
//!
//! Stream record layout: the same bytes a worker reads from RocksDB and writes into a spilled
//! segment, so a segment read and a live read return identical bytes:
//!
//! ```text
//!  0..4   map          u32
//!  4..12  attempt      u64
//! 12..16  seq          u32
//! 16..20  batch_len    u32
//! 20..    batch        (header + data, as above)
//! ```
//!
//! Invariants: no length is trusted before it is checked against the bytes present and the
//! configured maximum; the CRC covers the uncompressed bytes so it also catches a codec bug.

use crate::error::ProtoError;

pub const BATCH_HEADER_LEN: usize = 16;
pub const STREAM_RECORD_HEADER_LEN: usize = 20;
/// Default bound on a batch's uncompressed size.
pub const DEFAULT_MAX_BATCH_RAW: u32 = 64 << 20;

/// How a batch's data is compressed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Codec {
    None = 0,
    Lz4 = 1,
}

impl Codec {
    pub fn from_u8(v: u8) -> Result<Codec, ProtoError> {
        match v {
            0 => Ok(Codec::None),
            1 => Ok(Codec::Lz4),
            other => Err(ProtoError::UnknownCodec(other)),
        }
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The most bytes [`encode_batch`] appends for `raw_len` raw bytes: size a batch's buffer with
/// it, so encoding never reallocates (and copies) it.
pub fn max_encoded_len(raw_len: usize) -> usize {
    BATCH_HEADER_LEN + lz4_flex::block::get_maximum_output_size(raw_len)
}

/// Header flag: the batch's data is sealed (encrypted and authenticated).
pub const FLAG_SEALED: u8 = 1;

/// Appends one encoded batch of `raw` to `out` and returns its CRC.
///
/// With `Codec::Lz4` the data is stored uncompressed when compression would not make it
/// smaller, so incompressible records cost no more than their size plus the header.
pub fn encode_batch(raw: &[u8], codec: Codec, out: &mut Vec<u8>) -> Result<u32, ProtoError> {
    let raw_len = batch_raw_len(raw)?;
    let crc = crc32fast::hash(raw);
    let start = out.len();
    out.extend_from_slice(&[0u8; BATCH_HEADER_LEN]);
    let used = compress_onto(raw, codec, out);
    write_header(out, start, used, 0, raw_len, crc);
    Ok(crc)
}

pub(crate) fn batch_raw_len(raw: &[u8]) -> Result<u32, ProtoError> {
    u32::try_from(raw.len()).map_err(|_| ProtoError::TooLarge {
        what: "batch",
        len: raw.len() as u64,
        max: u32::MAX as u64,
    })
}

/// Fills the header at `out[start..]` for the data after it.
pub(crate) fn write_header(out: &mut [u8], start: usize, codec: Codec, flags: u8, raw_len: u32, crc: u32) {
    let data_len = (out.len() - start - BATCH_HEADER_LEN) as u32;
    let h = &mut out[start..start + BATCH_HEADER_LEN];
    h[0] = codec as u8;
    h[1] = flags;
    h[4..8].copy_from_slice(&raw_len.to_le_bytes());
    h[8..12].copy_from_slice(&data_len.to_le_bytes());
    h[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// Appends `raw` to `out`, lz4-compressed when asked and smaller; returns the codec used.
pub(crate) fn compress_onto(raw: &[u8], codec: Codec, out: &mut Vec<u8>) -> Codec {
    let at = out.len();
    if codec == Codec::Lz4 && !raw.is_empty() {
        let bound = lz4_flex::block::get_maximum_output_size(raw.len());
        out.resize(at + bound, 0);
        match lz4_flex::block::compress_into(raw, &mut out[at..]) {
            Ok(n) if n < raw.len() => {
                out.truncate(at + n);
                return Codec::Lz4;
            }
            _ => out.truncate(at),
        }
    }
    out.extend_from_slice(raw);
    Codec::None
}

/// A batch read in place from a buffer.
#[derive(Clone, Copy, Debug)]
pub struct BatchView<'a> {
    pub codec: Codec,
    /// Encrypted by the application: read with [`crate::seal::BatchCipher::open_into`].
    pub sealed: bool,
    pub raw_len: u32,
    pub crc: u32,
    pub data: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Parses one batch at the start of `buf`; returns it and the bytes after it.
    pub fn parse(buf: &'a [u8], max_raw: u32) -> Result<(BatchView<'a>, &'a [u8]), ProtoError> {
        if buf.len() < BATCH_HEADER_LEN {
            return Err(ProtoError::Truncated { need: BATCH_HEADER_LEN, have: buf.len() });
        }
        let codec = Codec::from_u8(buf[0])?;
        if buf[1] & !FLAG_SEALED != 0 || buf[2..4] != [0, 0] {
            return Err(ProtoError::Invalid("batch reserved bytes are not zero".into()));
        }
        let sealed = buf[1] & FLAG_SEALED != 0;
        let raw_len = le_u32(buf, 4);
        let data_len = le_u32(buf, 8) as usize;
        let crc = le_u32(buf, 12);
        if raw_len > max_raw {
            return Err(ProtoError::TooLarge { what: "batch", len: raw_len as u64, max: max_raw as u64 });
        }
        if codec == Codec::None && !sealed && data_len != raw_len as usize {
            return Err(ProtoError::Invalid("uncompressed batch length mismatch".into()));
        }
        let end = BATCH_HEADER_LEN + data_len;
        if buf.len() < end {
            return Err(ProtoError::Truncated { need: end, have: buf.len() });
        }
        Ok((BatchView { codec, sealed, raw_len, crc, data: &buf[BATCH_HEADER_LEN..end] }, &buf[end..]))
    }

    /// Parses a buffer that must hold exactly one batch.
    pub fn parse_exact(buf: &'a [u8], max_raw: u32) -> Result<BatchView<'a>, ProtoError> {
        let (v, rest) = Self::parse(buf, max_raw)?;
        if !rest.is_empty() {
            return Err(ProtoError::Invalid(format!("{} trailing bytes after batch", rest.len())));
        }
        Ok(v)
    }

    /// Appends the uncompressed bytes to `out` after checking the CRC. On error `out` is left
    /// as it was.
    pub fn decode_into(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        if self.sealed {
            return Err(ProtoError::Sealed);
        }
        let start = out.len();
        decompress_onto(self.codec, self.data, self.raw_len, out)?;
        let actual = crc32fast::hash(&out[start..]);
        if actual != self.crc {
            out.truncate(start);
            return Err(ProtoError::Checksum { expected: self.crc, actual });
        }
        Ok(())
    }

    /// Length of the encoded batch, header included.
    pub fn encoded_len(&self) -> usize {
        BATCH_HEADER_LEN + self.data.len()
    }
}

/// Appends `data` decoded by `codec` (`raw_len` bytes) to `out`; on error `out` is as it was.
pub(crate) fn decompress_onto(codec: Codec, data: &[u8], raw_len: u32, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    let start = out.len();
    match codec {
        Codec::None if data.len() == raw_len as usize => out.extend_from_slice(data),
        Codec::None => return Err(ProtoError::Decompress("stored length differs from the header's".into())),
        Codec::Lz4 => {
            out.resize(start + raw_len as usize, 0);
            match lz4_flex::block::decompress_into(data, &mut out[start..]) {
                Ok(n) if n == raw_len as usize => {}
                Ok(n) => {
                    out.truncate(start);
                    return Err(ProtoError::Decompress(format!("got {n} bytes, header says {raw_len}")));
                }
                Err(e) => {
                    out.truncate(start);
                    return Err(ProtoError::Decompress(e.to_string()));
                }
            }
        }
    }
    Ok(())
}

/// One batch in a read stream or a spilled segment, tagged with where it came from.
#[derive(Clone, Copy, Debug)]
pub struct StreamRecord<'a> {
    pub map: u32,
    pub attempt: u64,
    pub seq: u32,
    /// The encoded batch (header + data).
    pub batch: &'a [u8],
}

impl<'a> StreamRecord<'a> {
    /// Appends the record header and `batch` to `out`.
    pub fn encode(map: u32, attempt: u64, seq: u32, batch: &[u8], out: &mut Vec<u8>) {
        Self::encode_header(map, attempt, seq, batch.len() as u32, out);
        out.extend_from_slice(batch);
    }

    /// Appends only the record header; the caller appends the `batch_len` bytes of the batch
    /// (e.g. read straight from a file into `out`).
    pub fn encode_header(map: u32, attempt: u64, seq: u32, batch_len: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&map.to_le_bytes());
        out.extend_from_slice(&attempt.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&batch_len.to_le_bytes());
    }

    /// Encoded length of a record holding a batch of `batch_len` bytes.
    pub fn encoded_len(batch_len: usize) -> usize {
        STREAM_RECORD_HEADER_LEN + batch_len
    }

    /// Parses one record at the start of `buf`, bounding the batch to `max_batch` bytes.
    pub fn parse(buf: &'a [u8], max_batch: u32) -> Result<(StreamRecord<'a>, &'a [u8]), ProtoError> {
        if buf.len() < STREAM_RECORD_HEADER_LEN {
            return Err(ProtoError::Truncated { need: STREAM_RECORD_HEADER_LEN, have: buf.len() });
        }
        let map = le_u32(buf, 0);
        let attempt = le_u64(buf, 4);
        let seq = le_u32(buf, 12);
        let len = le_u32(buf, 16);
        if len > max_batch {
            return Err(ProtoError::TooLarge { what: "stream record", len: len as u64, max: max_batch as u64 });
        }
        let end = STREAM_RECORD_HEADER_LEN + len as usize;
        if buf.len() < end {
            return Err(ProtoError::Truncated { need: end, have: buf.len() });
        }
        Ok((StreamRecord { map, attempt, seq, batch: &buf[STREAM_RECORD_HEADER_LEN..end] }, &buf[end..]))
    }
}

/// Iterates the stream records of a chunk body.
pub struct StreamRecords<'a> {
    rest: &'a [u8],
    max_batch: u32,
}

impl<'a> StreamRecords<'a> {
    pub fn new(buf: &'a [u8], max_batch: u32) -> Self {
        Self { rest: buf, max_batch }
    }
}

impl<'a> Iterator for StreamRecords<'a> {
    type Item = Result<StreamRecord<'a>, ProtoError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match StreamRecord::parse(self.rest, self.max_batch) {
            Ok((r, rest)) => {
                self.rest = rest;
                Some(Ok(r))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compressible_data_is_compressed_and_round_trips() {
        let raw = vec![7u8; 10_000];
        let mut out = Vec::new();
        let crc = encode_batch(&raw, Codec::Lz4, &mut out).unwrap();
        assert!(out.len() < raw.len() / 10);
        let v = BatchView::parse_exact(&out, DEFAULT_MAX_BATCH_RAW).unwrap();
        assert_eq!(v.codec, Codec::Lz4);
        assert_eq!(v.crc, crc);
        let mut back = Vec::new();
        v.decode_into(&mut back).unwrap();
        assert_eq!(back, raw);
    }

    #[test]
    fn incompressible_data_is_stored_raw() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let raw: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let mut out = Vec::new();
        encode_batch(&raw, Codec::Lz4, &mut out).unwrap();
        let v = BatchView::parse_exact(&out, DEFAULT_MAX_BATCH_RAW).unwrap();
        assert_eq!(v.codec, Codec::None);
        assert_eq!(out.len(), raw.len() + BATCH_HEADER_LEN);
    }

    #[test]
    fn corrupt_data_is_rejected_and_output_untouched() {
        let raw = b"hello hello hello hello hello hello".repeat(20);
        for codec in [Codec::None, Codec::Lz4] {
            let mut out = Vec::new();
            encode_batch(&raw, codec, &mut out).unwrap();
            let last = out.len() - 1;
            out[last] ^= 0x40;
            let v = BatchView::parse_exact(&out, DEFAULT_MAX_BATCH_RAW).unwrap();
            let mut back = b"keep".to_vec();
            assert!(v.decode_into(&mut back).is_err(), "{codec:?}");
            assert_eq!(back, b"keep");
        }
    }

    #[test]
    fn crc_mismatch_is_a_checksum_error() {
        let mut out = Vec::new();
        encode_batch(b"abc", Codec::None, &mut out).unwrap();
        out[12] ^= 1;
        let v = BatchView::parse_exact(&out, 1024).unwrap();
        assert!(matches!(v.decode_into(&mut Vec::new()), Err(ProtoError::Checksum { .. })));
    }

    #[test]
    fn headers_are_bounded() {
        let mut out = Vec::new();
        encode_batch(&[1u8; 100], Codec::None, &mut out).unwrap();
        assert!(matches!(BatchView::parse(&out, 99), Err(ProtoError::TooLarge { .. })));
        assert!(matches!(BatchView::parse(&out[..50], 1000), Err(ProtoError::Truncated { .. })));
        assert!(matches!(BatchView::parse(&out[..3], 1000), Err(ProtoError::Truncated { .. })));
        let mut bad = out.clone();
        bad[0] = 9;
        assert!(matches!(BatchView::parse(&bad, 1000), Err(ProtoError::UnknownCodec(9))));
        let mut bad = out.clone();
        bad[8] = 0xff;
        assert!(BatchView::parse(&bad, 1000).is_err());
        // A lz4 batch claiming a larger raw length than it decodes to.
        let mut lz = Vec::new();
        encode_batch(&[0u8; 1000], Codec::Lz4, &mut lz).unwrap();
        lz[4..8].copy_from_slice(&2000u32.to_le_bytes());
        let v = BatchView::parse_exact(&lz, 4096).unwrap();
        assert!(v.decode_into(&mut Vec::new()).is_err());
    }

    #[test]
    fn stream_records_iterate_and_reject_truncation() {
        let mut batch = Vec::new();
        encode_batch(b"payload", Codec::None, &mut batch).unwrap();
        let mut body = Vec::new();
        StreamRecord::encode(3, 77, 0, &batch, &mut body);
        StreamRecord::encode(4, 78, 1, &batch, &mut body);
        let recs: Vec<_> = StreamRecords::new(&body, 1 << 20).collect::<Result<_, _>>().unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[1].map, recs[1].attempt, recs[1].seq), (4, 78, 1));
        assert_eq!(recs[0].batch, &batch[..]);
        let cut = &body[..body.len() - 1];
        let res: Result<Vec<_>, _> = StreamRecords::new(cut, 1 << 20).collect();
        assert!(res.is_err());
    }

    proptest! {
        #[test]
        fn any_batch_round_trips(raw in proptest::collection::vec(any::<u8>(), 0..5000), lz4 in any::<bool>()) {
            let codec = if lz4 { Codec::Lz4 } else { Codec::None };
            let mut out = vec![1, 2, 3];
            let crc = encode_batch(&raw, codec, &mut out).unwrap();
            prop_assert_eq!(crc, crc32fast::hash(&raw));
            let v = BatchView::parse_exact(&out[3..], DEFAULT_MAX_BATCH_RAW).unwrap();
            let mut back = Vec::new();
            v.decode_into(&mut back).unwrap();
            prop_assert_eq!(back, raw);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok((v, _)) = BatchView::parse(&bytes, 1 << 16) {
                let _ = v.decode_into(&mut Vec::new());
            }
            for r in StreamRecords::new(&bytes, 1 << 16) {
                if r.is_err() { break; }
            }
        }
    }
}
