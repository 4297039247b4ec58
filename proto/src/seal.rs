//! Batches sealed by the application: encrypted and authenticated in the executor, so workers,
//! their disks and the object store hold only ciphertext.
//!
//! With Spark's IO encryption on (`spark.io.encryption.enabled`), the plugin hands the native
//! client the application's IO key (Spark's own, never sent to Shoal). From it a batch key is
//! derived with HKDF-SHA256; each batch is compressed, then sealed with AES-256-GCM under a
//! random 96-bit nonce, with where the batch belongs (shuffle key, partition, map, attempt,
//! seq) as associated data.
//!
//! Invariants:
//! - A sealed batch's header says so (`FLAG_SEALED`); its `data` is `nonce | ciphertext |
//!   tag`, and its CRC covers `data` as stored, so workers and readers check integrity without
//!   the key and the header reveals nothing about the plaintext but its length.
//! - A batch opens only under the key it was sealed with and only at the place it was sealed
//!   for: moved to another partition, map, attempt or seq, it fails to authenticate
//!   ([`ProtoError::Unsealed`]), never decodes to other rows.
//! - A sealed batch read without a key is a typed error ([`ProtoError::Sealed`]), never bytes.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::batch::{
    batch_raw_len, compress_onto, decompress_onto, write_header, BatchView, Codec, BATCH_HEADER_LEN, FLAG_SEALED,
};
use crate::error::ProtoError;
use crate::ids::ShuffleKey;

const TAG_LEN: usize = 16;
/// Bytes a sealed batch's data holds beyond the compressed bytes.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
const KDF_INFO: &[u8] = b"shoal batch seal v1 aes-256-gcm";

/// Where a batch belongs; bound into its seal.
#[derive(Clone, Copy, Debug)]
pub struct BatchPlace<'a> {
    pub shuffle: &'a ShuffleKey,
    pub partition: u32,
    pub map: u32,
    pub attempt: u64,
    pub seq: u32,
}

impl BatchPlace<'_> {
    fn aad(&self) -> Vec<u8> {
        let app = self.shuffle.app.as_str().as_bytes();
        let mut a = Vec::with_capacity(1 + app.len() + 28);
        a.push(app.len() as u8);
        a.extend_from_slice(app);
        for v in [self.shuffle.shuffle_id, self.shuffle.generation, self.partition, self.map] {
            a.extend_from_slice(&v.to_le_bytes());
        }
        a.extend_from_slice(&self.attempt.to_le_bytes());
        a.extend_from_slice(&self.seq.to_le_bytes());
        a
    }
}

/// The key an application's batches are sealed and opened with.
pub struct BatchCipher {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for BatchCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchCipher(***)")
    }
}

impl BatchCipher {
    /// The cipher for an application's IO encryption key (Spark's: 16, 24 or 32 bytes).
    pub fn from_app_key(app_key: &[u8]) -> Result<BatchCipher, ProtoError> {
        if !matches!(app_key.len(), 16 | 24 | 32) {
            return Err(ProtoError::Invalid(format!(
                "an IO encryption key is 16, 24 or 32 bytes, not {}",
                app_key.len()
            )));
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"shoal");
        let prk = salt.extract(app_key);
        let okm =
            prk.expand(&[KDF_INFO], &AES_256_GCM).map_err(|_| ProtoError::Invalid("key derivation failed".into()))?;
        let key = UnboundKey::from(okm);
        Ok(BatchCipher { key: LessSafeKey::new(key), rng: SystemRandom::new() })
    }

    /// Appends `raw` as one sealed batch for `place` to `out`; returns its CRC (of the data as
    /// stored, which is what the map's commit sums).
    pub fn seal_batch(
        &self,
        raw: &[u8],
        codec: Codec,
        place: &BatchPlace<'_>,
        out: &mut Vec<u8>,
    ) -> Result<u32, ProtoError> {
        let raw_len = batch_raw_len(raw)?;
        let start = out.len();
        out.extend_from_slice(&[0u8; BATCH_HEADER_LEN]);
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| ProtoError::Invalid("no system randomness".into()))?;
        out.extend_from_slice(&nonce);
        let used = compress_onto(raw, codec, out);
        let body = start + BATCH_HEADER_LEN;
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.aad()),
                &mut out[body + NONCE_LEN..],
            )
            .map_err(|_| ProtoError::Invalid("sealing failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        let crc = crc32fast::hash(&out[body..]);
        write_header(out, start, used, FLAG_SEALED, raw_len, crc);
        Ok(crc)
    }

    /// Appends the rows of a sealed batch read at `place` to `out`, after checking its CRC and
    /// its seal. On error `out` is left as it was. The compressed bytes are copied once (the
    /// reader's chunk is shared and AES-GCM opens in place), then decompressed into `out`.
    pub fn open_into(&self, view: &BatchView<'_>, place: &BatchPlace<'_>, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        if !view.sealed {
            return view.decode_into(out);
        }
        let actual = crc32fast::hash(view.data);
        if actual != view.crc {
            return Err(ProtoError::Checksum { expected: view.crc, actual });
        }
        if view.data.len() < SEAL_OVERHEAD {
            return Err(ProtoError::Unsealed);
        }
        let (nonce, sealed) = view.data.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| ProtoError::Unsealed)?;
        let mut buf = sealed.to_vec();
        let plain =
            self.key.open_in_place(nonce, Aad::from(place.aad()), &mut buf).map_err(|_| ProtoError::Unsealed)?;
        decompress_onto(view.codec, plain, view.raw_len, out)
    }

    /// The most bytes [`BatchCipher::seal_batch`] appends for `raw_len` raw bytes.
    pub fn max_sealed_len(raw_len: usize) -> usize {
        crate::batch::max_encoded_len(raw_len) + SEAL_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::DEFAULT_MAX_BATCH_RAW;
    use crate::ids::AppId;

    fn key() -> ShuffleKey {
        ShuffleKey::new(AppId::new("app-1").unwrap(), 3, 0)
    }

    fn place(k: &ShuffleKey, seq: u32) -> BatchPlace<'_> {
        BatchPlace { shuffle: k, partition: 7, map: 2, attempt: 11, seq }
    }

    fn rows() -> Vec<u8> {
        (0..2000).flat_map(|i: u32| format!("row-{i:05}-secret-payload\n").into_bytes()).collect()
    }

    #[test]
    fn a_sealed_batch_opens_only_with_its_key_at_its_place() {
        let c = BatchCipher::from_app_key(&[7u8; 16]).unwrap();
        let k = key();
        for codec in [Codec::Lz4, Codec::None] {
            let raw = rows();
            let mut b = Vec::new();
            let crc = c.seal_batch(&raw, codec, &place(&k, 1), &mut b).unwrap();
            assert!(b.len() <= BatchCipher::max_sealed_len(raw.len()));
            assert!(!b.windows(6).any(|w| w == b"secret"), "plaintext in a sealed batch");
            let v = BatchView::parse_exact(&b, DEFAULT_MAX_BATCH_RAW).unwrap();
            assert!(v.sealed && v.crc == crc && v.raw_len == raw.len() as u32);
            let mut out = vec![1, 2];
            c.open_into(&v, &place(&k, 1), &mut out).unwrap();
            assert_eq!(&out[2..], &raw[..]);
            // Without a key, another key, another place: typed errors, nothing appended.
            let mut out = Vec::new();
            assert_eq!(v.decode_into(&mut out), Err(ProtoError::Sealed));
            let other = BatchCipher::from_app_key(&[8u8; 16]).unwrap();
            assert_eq!(other.open_into(&v, &place(&k, 1), &mut out), Err(ProtoError::Unsealed));
            assert_eq!(c.open_into(&v, &place(&k, 2), &mut out), Err(ProtoError::Unsealed));
            let k2 = ShuffleKey::new(AppId::new("app-1").unwrap(), 3, 1);
            assert_eq!(c.open_into(&v, &place(&k2, 1), &mut out), Err(ProtoError::Unsealed));
            assert!(out.is_empty());
            // A flipped bit is caught by the CRC (without the key) and by the tag.
            let mut bad = b.clone();
            let n = bad.len();
            bad[n - 20] ^= 1;
            let v = BatchView::parse_exact(&bad, DEFAULT_MAX_BATCH_RAW).unwrap();
            assert!(matches!(c.open_into(&v, &place(&k, 1), &mut out), Err(ProtoError::Checksum { .. })));
        }
        // Two seals of the same rows differ (random nonces).
        let (mut a, mut b) = (Vec::new(), Vec::new());
        c.seal_batch(b"same", Codec::Lz4, &place(&k, 1), &mut a).unwrap();
        c.seal_batch(b"same", Codec::Lz4, &place(&k, 1), &mut b).unwrap();
        assert_ne!(a, b);
        assert!(BatchCipher::from_app_key(&[0u8; 5]).is_err());
    }
}
