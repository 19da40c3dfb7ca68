//! A deterministic text generator for tests, benchmarks and examples: Zipf-distributed
//! words from a made-up vocabulary, in lines of varying length. The same seed and size
//! give the same bytes on every machine.

/// Settings of a generated corpus.
///
/// ```
/// use flowstage::corpus::Corpus;
/// let text = Corpus::new(10_000).seed(7).generate();
/// assert!(text.len() >= 10_000);
/// assert_eq!(text, Corpus::new(10_000).seed(7).generate());
/// ```
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
        let mut rng = SplitMix64(self.seed);
        let words: Vec<Vec<u8>> = (0..self.vocabulary)
            .map(|rank| make_word(rank, &mut rng))
            .collect();
        // Zipf with exponent 1: weight of rank r is 1 / (r + 1).
        let mut cumulative = Vec::with_capacity(self.vocabulary);
        let mut total = 0.0f64;
        for rank in 0..self.vocabulary {
            total += 1.0 / (rank as f64 + 1.0);
            cumulative.push(total);
        }
        let mut text = Vec::with_capacity(self.bytes + 128);
        while text.len() < self.bytes {
            let words_in_line = 4 + (rng.next() % 12) as usize;
            for index in 0..words_in_line {
                if index > 0 {
                    text.push(b' ');
                }
                let target = rng.unit() * total;
                let rank = cumulative
                    .partition_point(|&c| c < target)
                    .min(words.len() - 1);
                text.extend_from_slice(&words[rank]);
            }
            text.push(b'\n');
        }
        text
    }
}

/// A pseudo-word: syllables from a small alphabet, longer for rarer ranks.
fn make_word(rank: usize, rng: &mut SplitMix64) -> Vec<u8> {
    const ONSETS: &[&[u8]] = &[
        b"b", b"c", b"d", b"f", b"g", b"h", b"l", b"m", b"n", b"p", b"r", b"s", b"t", b"v", b"st",
        b"tr", b"pl", b"gr", b"sh", b"th",
    ];
    const VOWELS: &[&[u8]] = &[b"a", b"e", b"i", b"o", b"u", b"ea", b"ou", b"ai"];
    let syllables =
        1 + (usize::BITS - rank.leading_zeros()) as usize / 5 + (rng.next() % 2) as usize;
    let mut word = Vec::new();
    for _ in 0..syllables {
        word.extend_from_slice(ONSETS[(rng.next() % ONSETS.len() as u64) as usize]);
        word.extend_from_slice(VOWELS[(rng.next() % VOWELS.len() as u64) as usize]);
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

/// splitmix64: small, fast, and good enough for test data.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
