//! Which partition an event goes to: decided by the sink, not by librdkafka, because
//! after a restart the sink must know where each event would have landed to tell
//! whether it is already there.

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), so that a key lands in the
/// partition the Java client and librdkafka's `murmur2` partitioner would pick.
pub(super) fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The partition of an event among `partitions` (at least 1): by its key's murmur2 as
/// Kafka's clients do, or spread by seq when it has no key.
pub(super) fn partition_of(key: Option<&[u8]>, seq: u64, partitions: i32) -> i32 {
    let n = partitions.max(1) as u32;
    let hash = match key {
        Some(key) => murmur2(key) & 0x7fff_ffff,
        None => (seq % u64::from(n)) as u32,
    };
    (hash % n) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_clients() {
        // Kafka's UtilsTest.testMurmur2.
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (text, expected) in cases {
            assert_eq!(murmur2(text.as_bytes()) as i32, expected, "{text}");
        }
    }

    #[test]
    fn partitions_stay_in_range() {
        for seq in [0, 1, u64::MAX] {
            for partitions in [1, 3, i32::MAX] {
                for key in [None, Some(&b""[..]), Some(&b"order-7"[..])] {
                    let p = partition_of(key, seq, partitions);
                    assert!((0..partitions).contains(&p), "{key:?} {seq} {partitions}");
                }
            }
        }
        assert_eq!(partition_of(None, 7, 0), 0, "no partitions counts as one");
    }
}
