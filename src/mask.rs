//! RFC 6455 5.3 masking, eight bytes at a time.

/// XORs `buf` with `key`, as if `buf` started `offset` bytes into the masked
/// payload (so a payload can be unmasked in pieces as it arrives).
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // The key as a little-endian word, rotated so that its low byte masks buf[0]:
    // a rotate instead of four indexed loads and a byte-by-byte build of the wide key.
    let key = u32::from_le_bytes(key).rotate_right(8 * (offset & 3) as u32);
    let wide = u64::from(key) * 0x1_0000_0001;
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        // chunks_exact_mut yields exactly 8 bytes, so the conversion cannot fail.
        if let Ok(bytes) = <&mut [u8; 8]>::try_from(word) {
            *bytes = (u64::from_le_bytes(*bytes) ^ wide).to_le_bytes();
        }
    }
    // Whole words keep the key aligned: the tail starts at the key's low byte again.
    let mut tail = words.into_remainder();
    if tail.len() >= 4 {
        let (four, rest) = std::mem::take(&mut tail).split_at_mut(4);
        if let Ok(four) = <&mut [u8; 4]>::try_from(four) {
            *four = (u32::from_le_bytes(*four) ^ key).to_le_bytes();
        }
        tail = rest;
    }
    for (b, k) in tail.iter_mut().zip(key.to_le_bytes()) {
        *b ^= k;
    }
}

#[cfg(test)]
pub(crate) fn apply_mask_naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unmasks_the_rfc_hello_example() {
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }

    proptest! {
        #[test]
        fn fast_mask_equals_naive_mask_at_every_length_alignment_and_offset(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            start in 0usize..16,
            key in any::<[u8; 4]>(),
            offset in 0usize..8,
        ) {
            let start = start.min(data.len());
            let mut fast = data.clone();
            let mut naive = data;
            apply_mask(&mut fast[start..], key, offset);
            apply_mask_naive(&mut naive[start..], key, offset);
            prop_assert_eq!(fast, naive);
        }

        #[test]
        fn masking_in_pieces_equals_masking_at_once(
            data in proptest::collection::vec(any::<u8>(), 0..100),
            cut in 0usize..100,
            key in any::<[u8; 4]>(),
        ) {
            let cut = cut.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);
            let mut pieces = data;
            let (a, b) = pieces.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            prop_assert_eq!(whole, pieces);
        }
    }
}
