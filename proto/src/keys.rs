//! Byte-key helpers shared by the RocksDB layouts of the master and the worker.

/// The smallest key greater than every key that starts with `prefix` (the exclusive end of a
/// prefix range, for range deletes and bounded scans).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): nothing of that length is greater, so go one byte longer.
    vec![0xff; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_bound_their_ranges() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert_eq!(prefix_end(&[0xff, 0xff]), vec![0xff; 3]);
        let p = b"shuffle\x00";
        let end = prefix_end(p);
        for k in [&b"shuffle\x00"[..], b"shuffle\x00\xff\xff", b"shuffle\x00zzz"] {
            assert!(k >= &p[..] && k < &end[..]);
        }
        assert!(b"shuffle\x01".as_slice() >= end.as_slice());
    }
}
