//! A deterministic text generator for the examples, tests and benchmarks (not part of
//! the library): Zipf-distributed words from a made-up vocabulary, in lines of varying
//! length. The same seed and size give the same bytes on every machine: a ChaCha8
//! generator (`rand_chacha`, whose stream is fixed by its algorithm) and `rand_distr`'s
//! Zipf distribution.
//!
//! Shared by path: `#[path = "common/corpus.rs"] mod corpus;` from an example,
//! `#[path = "../examples/common/corpus.rs"] mod corpus;` from a test or a bench.
#![allow(dead_code)] // each user takes the part it needs

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};

/// Settings of a generated corpus.
#[derive(Debug, Clone)]
pub struct Corpus {
    bytes: usize,
    seed: u64,
    vocabulary: usize,
}

impl Corpus {
    /// About `bytes` bytes of text (it stops at the first line end past that size).
    pub fn new(bytes: usize) -> Self {
        Corpus {
            bytes,
            seed: 0x5eed,
            vocabulary: 50_000,
        }
    }

    /// The random seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The number of distinct words to draw from (at least 1).
    pub fn vocabulary(mut self, vocabulary: usize) -> Self {
        self.vocabulary = vocabulary.max(1);
        self
    }

    /// Generates the text.
    pub fn generate(&self) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let words: Vec<Vec<u8>> = (0..self.vocabulary)
            .map(|rank| make_word(rank, &mut rng))
            .collect();
        // Zipf with exponent 1 over ranks 1..=n: rank r is drawn with weight 1 / r.
        let zipf = Zipf::new(self.vocabulary as f64, 1.0).expect("n >= 1 and s >= 0");
        let mut text = Vec::with_capacity(self.bytes + 128);
        while text.len() < self.bytes {
            let words_in_line = rng.random_range(4..16);
            for index in 0..words_in_line {
                if index > 0 {
                    text.push(b' ');
                }
                let rank = (zipf.sample(&mut rng) as usize).clamp(1, words.len()) - 1;
                text.extend_from_slice(&words[rank]);
            }
            text.push(b'\n');
        }
        text
    }
}

/// A pseudo-word: syllables from a small alphabet, longer for rarer ranks.
fn make_word(rank: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    const ONSETS: &[&[u8]] = &[
        b"b", b"c", b"d", b"f", b"g", b"h", b"l", b"m", b"n", b"p", b"r", b"s", b"t", b"v", b"st",
        b"tr", b"pl", b"gr", b"sh", b"th",
    ];
    const VOWELS: &[&[u8]] = &[b"a", b"e", b"i", b"o", b"u", b"ea", b"ou", b"ai"];
    let syllables = 1 + (usize::BITS - rank.leading_zeros()) as usize / 5 + rng.random_range(0..2);
    let mut word = Vec::new();
    for _ in 0..syllables {
        word.extend_from_slice(ONSETS[rng.random_range(0..ONSETS.len())]);
        word.extend_from_slice(VOWELS[rng.random_range(0..VOWELS.len())]);
    }
    // The rank in base 26 keeps every word distinct.
    let mut n = rank;
    loop {
        word.push(b'a' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    word
}
