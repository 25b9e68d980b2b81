//! What every layer's frozen state (a binary upgrade's snapshot, src/upgrade/) shares:
//! times as durations (an `Instant` means nothing in another process), and serde
//! helpers that keep decoding bounded by the bytes actually present: byte strings
//! are taken whole from the input (the decoder checks their length against what is
//! left), and sequences grow as their elements decode, never preallocated from a
//! declared count.

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;

/// Longer than anything a process waits for; a decoded duration is capped at this, so
/// that adding it to an `Instant` cannot overflow.
const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A deadline as the time left until it (zero once past).
pub fn left(deadline: Option<Instant>, now: Instant) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(now))
}

/// The deadline `left` said, from `now`.
pub fn deadline(left: Option<Duration>, now: Instant) -> Option<Instant> {
    left.map(|d| now + d.min(LONGEST))
}

/// A moment past as the time since it.
pub fn ago(then: Instant, now: Instant) -> Duration {
    now.saturating_duration_since(then)
}

/// The moment `ago` said, from `now` (`now` itself if the clock does not reach back
/// that far).
pub fn since(ago: Duration, now: Instant) -> Instant {
    now.checked_sub(ago).unwrap_or(now)
}

/// `#[serde(with = "crate::frozen::bytes")]` on a `Vec<u8>`: a byte string.
pub mod bytes {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl Visitor<'_> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
}

/// `#[serde(with = "crate::frozen::json")]`: a value as a JSON string, by field names,
/// for state whose fields come and go between releases (`#[serde(default)]` on it).
pub mod json {
    use serde::de::{DeserializeOwned, Error};
    use serde::Serialize;

    use super::*;

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(value).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        serde_json::from_str(&text).map_err(D::Error::custom)
    }
}

/// `#[serde(with = "crate::frozen::pairs")]` on a map: a sequence of (key, value), for
/// keys JSON cannot name (tuples).
pub mod pairs {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::*;

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(map: &BTreeMap<K, V>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        seq::<D, (K, V)>(d).map(|pairs| pairs.into_iter().collect())
    }
}

/// A byte string for places a `with` cannot reach (in a sequence, an option).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bytes(#[serde(with = "bytes")] pub Vec<u8>);

/// `#[serde(deserialize_with = "crate::frozen::seq")]` on a `Vec<T>`: grown as its
/// elements decode (each takes at least a byte), never sized from the declared count.
pub fn seq<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    struct SeqVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(items)
        }
    }

    d.deserialize_seq(SeqVisitor(PhantomData))
}

/// `seq` for a boxed slice.
pub fn boxed_seq<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Box<[T]>, D::Error> {
    seq(d).map(Vec::into_boxed_slice)
}
