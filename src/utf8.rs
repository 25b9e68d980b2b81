//! Incremental UTF-8 validation for text messages that arrive in pieces: it fails
//! as soon as the bytes so far cannot begin valid UTF-8 (RFC 6455 8.1), and carries
//! at most 3 bytes of an unfinished character between pieces.

#[derive(Clone, Debug, Default)]
pub struct Utf8Validator {
    carry: [u8; 4],
    carry_len: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// Validates the next piece. Once it has failed, start again with `reset`.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        if self.carry_len > 0 {
            let have = usize::from(self.carry_len);
            let need = sequence_len(self.carry[0]);
            let take = (need - have).min(bytes.len());
            self.carry[have..have + take].copy_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let filled = have + take;
            if filled < need {
                // Still unfinished: it must at least be a valid beginning.
                self.carry_len = filled as u8;
                return check_prefix(&self.carry[..filled]);
            }
            self.carry_len = 0;
            std::str::from_utf8(&self.carry[..need]).map_err(|_| InvalidUtf8)?;
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            // error_len() == None: the bytes end inside a character that may still be valid.
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// The message ended: an unfinished character is invalid.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let done = self.carry_len == 0;
        self.reset();
        if done {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }

    pub fn reset(&mut self) {
        self.carry_len = 0;
    }

    /// The bytes of an unfinished character carried to the next piece (at most 3): a
    /// validator fed them after a `reset` is this one again (a binary upgrade's snapshot).
    pub fn pending(&self) -> &[u8] {
        &self.carry[..usize::from(self.carry_len)]
    }
}

fn check_prefix(prefix: &[u8]) -> Result<(), InvalidUtf8> {
    match std::str::from_utf8(prefix) {
        Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
        _ => Ok(()),
    }
}

/// Length of the sequence a lead byte starts (only called on bytes that std
/// already accepted as the start of an unfinished character).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xF0..=0xF4 => 4,
        0xE0..=0xEF => 3,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pieces_valid(pieces: &[&[u8]]) -> bool {
        let mut v = Utf8Validator::default();
        pieces.iter().all(|p| v.feed(p).is_ok()) && v.finish().is_ok()
    }

    #[test]
    fn a_character_split_across_every_boundary_is_valid() {
        let text = "κόσμε 𝄞 ok".as_bytes();
        for cut in 0..=text.len() {
            assert!(pieces_valid(&[&text[..cut], &text[cut..]]), "cut {cut}");
        }
    }

    #[test]
    fn fails_as_soon_as_a_prefix_cannot_be_valid() {
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(&[0xF4]), Ok(()));
        // F4 90 is above U+10FFFF: invalid before the character is complete.
        assert_eq!(v.feed(&[0x90]), Err(InvalidUtf8));
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(&[0xED, 0xA0]), Err(InvalidUtf8), "surrogate");
    }

    #[test]
    fn an_unfinished_character_at_the_end_is_invalid() {
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(&[b'a', 0xE2, 0x82]), Ok(()));
        assert_eq!(v.finish(), Err(InvalidUtf8));
    }

    proptest! {
        #[test]
        fn any_split_agrees_with_std(data in proptest::collection::vec(any::<u8>(), 0..40), cuts in proptest::collection::vec(0usize..40, 0..4)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in cuts { pieces.push(&data[last..c]); last = c; }
            pieces.push(&data[last..]);
            prop_assert_eq!(pieces_valid(&pieces), std::str::from_utf8(&data).is_ok());
        }

        #[test]
        fn valid_text_byte_at_a_time_is_valid(s in "\\PC*") {
            let mut v = Utf8Validator::default();
            for b in s.as_bytes() { prop_assert!(v.feed(std::slice::from_ref(b)).is_ok()); }
            prop_assert!(v.finish().is_ok());
        }
    }
}
