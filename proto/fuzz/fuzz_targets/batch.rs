#![no_main]
//! Any bytes fed to the batch and stream-record decoders give data or an error, never a panic,
//! and decoded data always matches its CRC.

use libfuzzer_sys::fuzz_target;
use shuffle_proto::batch::{BatchView, StreamRecords};

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    if let Ok((view, _)) = BatchView::parse(data, 1 << 20) {
        if view.decode_into(&mut out).is_ok() {
            assert_eq!(crc32fast_hash(&out), view.crc);
        }
    }
    for rec in StreamRecords::new(data, 1 << 20) {
        match rec {
            Ok(r) => {
                if let Ok(v) = BatchView::parse_exact(r.batch, 1 << 20) {
                    out.clear();
                    let _ = v.decode_into(&mut out);
                }
            }
            Err(_) => break,
        }
    }
});

fn crc32fast_hash(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(b);
    h.finalize()
}
