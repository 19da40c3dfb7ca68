//! `Chunk`: a piece of a file made of whole records, and how to split it.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use super::word::Word;
use crate::error::FlowError;

/// What records end on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delimiter {
    /// `\n`: records are lines.
    Line,
    /// Any ASCII whitespace (space, `\t`, `\n`, `\r`, `\x0b`, `\x0c`): records are words.
    #[default]
    Whitespace,
}

/// ASCII whitespace as words are split: space, \t, \n, \r, \x0b, \x0c.
const WHITESPACE: [bool; 256] = {
    let mut table = [false; 256];
    table[b' ' as usize] = true;
    table[b'\t' as usize] = true;
    table[b'\n' as usize] = true;
    table[b'\r' as usize] = true;
    table[0x0b] = true;
    table[0x0c] = true;
    table
};

/// Whether `byte` separates words.
#[inline]
pub fn is_word_separator(byte: u8) -> bool {
    WHITESPACE[byte as usize]
}

impl Delimiter {
    /// Whether `byte` ends a record.
    #[inline]
    pub fn is(self, byte: u8) -> bool {
        match self {
            Delimiter::Line => byte == b'\n',
            Delimiter::Whitespace => is_word_separator(byte),
        }
    }

    /// The first delimiter in `bytes`.
    pub fn find(self, bytes: &[u8]) -> Option<usize> {
        match self {
            Delimiter::Line => memchr::memchr(b'\n', bytes),
            Delimiter::Whitespace => bytes.iter().position(|&b| is_word_separator(b)),
        }
    }

    /// The last delimiter in `bytes`.
    pub fn rfind(self, bytes: &[u8]) -> Option<usize> {
        match self {
            Delimiter::Line => memchr::memrchr(b'\n', bytes),
            Delimiter::Whitespace => bytes.iter().rposition(|&b| is_word_separator(b)),
        }
    }
}

#[derive(Debug)]
enum Data {
    Owned(Vec<u8>),
    Mapped(Arc<memmap2::Mmap>, Range<usize>),
}

/// A piece of a file (or stream) made of whole records: it never cuts a word or a line.
///
/// ```
/// use flowstage::source::Chunk;
/// let chunk = Chunk::from_bytes(b"to be\tor  not\n".to_vec());
/// let words: Vec<&[u8]> = chunk.words().collect();
/// assert_eq!(words, [&b"to"[..], b"be", b"or", b"not"]);
/// ```
#[derive(Debug)]
pub struct Chunk {
    data: Data,
    offset: u64,
    path: Arc<Path>,
}

impl Chunk {
    pub(crate) fn owned(bytes: Vec<u8>, offset: u64, path: Arc<Path>) -> Self {
        Chunk {
            data: Data::Owned(bytes),
            offset,
            path,
        }
    }

    pub(crate) fn mapped(
        map: Arc<memmap2::Mmap>,
        range: Range<usize>,
        offset: u64,
        path: Arc<Path>,
    ) -> Self {
        Chunk {
            data: Data::Mapped(map, range),
            offset,
            path,
        }
    }

    /// A chunk of in-memory bytes (offset 0, path `-`).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Chunk::owned(bytes, 0, Arc::from(Path::new("-")))
    }

    /// The bytes.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Owned(bytes) => bytes,
            Data::Mapped(map, range) => map.get(range.clone()).unwrap_or(&[]),
        }
    }

    /// Where the chunk starts in its file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The file the chunk comes from (`-` for standard input).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The words: maximal runs of bytes that are not ASCII whitespace.
    pub fn words(&self) -> Words<'_> {
        Words {
            bytes: self.bytes(),
        }
    }

    /// The words, as owned [`Word`]s (no allocation for words up to 30 bytes).
    ///
    /// ```
    /// use flowstage::source::{Chunk, Word};
    /// let words: Vec<Word> = Chunk::from_bytes(b"a b a".to_vec()).into_words().collect();
    /// assert_eq!(words, [Word::from("a"), Word::from("b"), Word::from("a")]);
    /// ```
    pub fn into_words(self) -> IntoWords {
        IntoWords {
            chunk: self,
            position: 0,
        }
    }

    /// How often each word occurs in this chunk, as owned `(Word, count)` pairs: counted
    /// with borrowed slices first, so a `Word` is made once per distinct word of the chunk,
    /// not once per word. Feed the pairs to
    /// [`reduce_by_key`](crate::flow::Flow::reduce_by_key) to count a whole file.
    ///
    /// ```
    /// use flowstage::source::{Chunk, Word};
    /// let mut counts = Chunk::from_bytes(b"a b a".to_vec()).word_counts();
    /// counts.sort();
    /// assert_eq!(counts, [(Word::from("a"), 2), (Word::from("b"), 1)]);
    /// ```
    pub fn word_counts(&self) -> Vec<(Word, u64)> {
        // Room for a distinct word per 64 bytes, up to 64 Ki words (prose has about one
        // per 50 to 100 bytes in a 1 MiB block): the map rarely grows, where growing
        // from empty rehashed each distinct word about once more.
        let room = (self.bytes().len() / 64).min(1 << 16);
        let mut counts: ahash::AHashMap<&[u8], u64> = ahash::AHashMap::with_capacity(room);
        for word in self.words() {
            *counts.entry(word).or_insert(0) += 1;
        }
        counts
            .into_iter()
            .map(|(word, count)| (Word::new(word), count))
            .collect()
    }

    /// The lines, without their `\n` (nor a `\r` before it); a last line without `\n`
    /// counts too.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        let bytes = self.bytes();
        let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let empty = bytes.is_empty();
        body.split(|&b| b == b'\n')
            .filter(move |_| !empty)
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
    }

    /// The lines as text: invalid UTF-8 is an error naming the file and the byte offset.
    ///
    /// ```
    /// use flowstage::source::Chunk;
    /// let chunk = Chunk::from_bytes(b"fine\nbad \xff here\n".to_vec());
    /// let lines: Vec<_> = chunk.text_lines().collect();
    /// assert_eq!(*lines[0].as_ref().unwrap(), "fine");
    /// assert!(lines[1].as_ref().unwrap_err().to_string().contains("byte 9"));
    /// ```
    pub fn text_lines(&self) -> impl Iterator<Item = Result<&str, FlowError>> {
        let base = self.bytes().as_ptr() as usize;
        self.lines().map(move |line| {
            std::str::from_utf8(line).map_err(|error| FlowError::InvalidUtf8 {
                path: self.path.to_path_buf(),
                offset: self.offset
                    + (line.as_ptr() as usize - base) as u64
                    + error.valid_up_to() as u64,
            })
        })
    }

    /// The lines as text, invalid UTF-8 replaced by U+FFFD.
    pub fn text_lines_lossy(&self) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
        self.lines().map(String::from_utf8_lossy)
    }
}

/// The words of a chunk; see [`Chunk::words`].
#[derive(Debug, Clone)]
pub struct Words<'a> {
    bytes: &'a [u8],
}

#[inline]
fn next_word(bytes: &[u8], position: &mut usize) -> Option<Range<usize>> {
    let mut start = *position;
    while start < bytes.len() && is_word_separator(bytes[start]) {
        start += 1;
    }
    if start == bytes.len() {
        *position = start;
        return None;
    }
    let end = word_end(bytes, start + 1);
    *position = end;
    Some(start..end)
}

/// The first separator at or after `from`, or the end of `bytes`: eight bytes at a time.
/// Every separator is below `0x21`; a block's bytes below it are flagged at once (the
/// SWAR "has less than" test: a flagged byte after a flagged one may be a false alarm,
/// a byte below `0x21` is never missed), and only flagged bytes are looked up. Prose
/// words are about five bytes: one block instead of a loop over each byte.
#[inline]
fn word_end(bytes: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = from;
    while let Some(Ok(block)) = bytes.get(at..at + 8).map(<[u8; 8]>::try_from) {
        let word = u64::from_le_bytes(block);
        let mut flagged = word.wrapping_sub(ONES * 0x21) & !word & HIGH;
        while flagged != 0 {
            let lane = (flagged.trailing_zeros() / 8) as usize;
            if block.get(lane).copied().is_some_and(is_word_separator) {
                return at + lane;
            }
            flagged &= flagged - 1;
        }
        at += 8;
    }
    while at < bytes.len() && !is_word_separator(bytes[at]) {
        at += 1;
    }
    at
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let bytes = self.bytes;
        let mut position = 0;
        let range = next_word(bytes, &mut position);
        self.bytes = &bytes[position..];
        range.map(|range| &bytes[range])
    }
}

/// The words of a chunk as owned [`Word`]s; see [`Chunk::into_words`].
#[derive(Debug)]
pub struct IntoWords {
    chunk: Chunk,
    position: usize,
}

impl Iterator for IntoWords {
    type Item = Word;

    #[inline]
    fn next(&mut self) -> Option<Word> {
        let bytes = self.chunk.bytes();
        next_word(bytes, &mut self.position).map(|range| Word::new(&bytes[range]))
    }
}
