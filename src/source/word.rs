//! `Word`: a short byte string stored inline, so splitting text into words allocates only
//! for the rare word longer than [`Word::INLINE`] bytes.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};

/// An owned byte string, inline up to [`Word::INLINE`] bytes (no allocation), on the heap
/// beyond. Hashes, compares and orders exactly like the `[u8]` it holds, and borrows as
/// one, so a map keyed by `Word` can be looked up with a `&[u8]`.
///
/// ```
/// use flowstage::source::Word;
/// let word = Word::new(b"flow");
/// assert_eq!(word.as_bytes(), b"flow");
/// assert!(word.is_inline());
/// let mut counts = std::collections::HashMap::new();
/// counts.insert(word, 1);
/// assert_eq!(counts.get(&b"flow"[..]), Some(&1));
/// ```
#[derive(Clone)]
pub struct Word(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; Word::INLINE] },
    Heap(Box<[u8]>),
}

impl Word {
    /// The longest word stored without allocating.
    pub const INLINE: usize = 30;

    /// A word holding a copy of `bytes`.
    #[inline]
    pub fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= Self::INLINE {
            let mut inline = [0u8; Self::INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            Word(Repr::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            })
        } else {
            Word(Repr::Heap(bytes.into()))
        }
    }

    /// The bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..*len as usize],
            Repr::Heap(bytes) => bytes,
        }
    }

    /// Whether the word is stored inline.
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline { .. })
    }
}

impl From<&[u8]> for Word {
    fn from(bytes: &[u8]) -> Self {
        Word::new(bytes)
    }
}

impl From<&str> for Word {
    fn from(text: &str) -> Self {
        Word::new(text.as_bytes())
    }
}

impl Borrow<[u8]> for Word {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Word {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Word {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            // Inline bytes past `len` are always zero, so whole arrays compare equal
            // exactly when the words do: one fixed-size compare, no call to memcmp.
            (Repr::Inline { len: a, bytes: x }, Repr::Inline { len: b, bytes: y }) => {
                a == b && x == y
            }
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}

impl Eq for Word {}

impl Hash for Word {
    // Must hash like `[u8]`, for `Borrow<[u8]>` lookups.
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialOrd for Word {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Word {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Word({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl fmt::Display for Word {
    /// Lossy UTF-8.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Words cross a cluster's partitions as byte strings.
#[cfg(feature = "timely")]
impl serde::Serialize for Word {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.as_bytes())
    }
}

#[cfg(feature = "timely")]
impl<'de> serde::Deserialize<'de> for Word {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;

        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Word;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Word, E> {
                Ok(Word::new(bytes))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Word, E> {
                Ok(Word::new(text.as_bytes()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Word, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(byte) = seq.next_element::<u8>()? {
                    bytes.push(byte);
                }
                Ok(Word::new(&bytes))
            }
        }

        deserializer.deserialize_bytes(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_words_go_to_the_heap_and_compare_by_bytes() {
        let long = vec![b'x'; 100];
        let word = Word::new(&long);
        assert!(!word.is_inline());
        assert_eq!(word.as_bytes(), &long[..]);
        assert_eq!(Word::new(b""), Word::new(b""));
        assert!(Word::new(b"a") < Word::new(b"b"));
        assert!(Word::new(b"ab") > Word::new(b"a"));
    }
}
