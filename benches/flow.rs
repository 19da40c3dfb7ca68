//! Flow-level throughput against rayon and a plain iterator.
//!
//! `cargo bench --bench flow`
//!
//! - `chain`: `map → filter → flat_map` over 10 M `u64`, summed. flowstage reads one range
//!   per core with `Flow::from_iters`; the chain and a per-stage `reduce(..).emit_state()`
//!   are fused into the source stages, and the per-stage sums are collected and added.
//!   rayon runs the same chain with `into_par_iter()`, and a sequential iterator gives the
//!   single-core floor. All three check the same sum.
//! - `word_count_literal`: the word count as a Flow user writes it — `flat_map` lines
//!   into words, `partition` by word (max_demand 4096: cheap events want larger batches,
//!   as the design measured with a hand-written prototype), `reduce` into a map per partition, collected —
//!   against rayon's `par_lines().fold(..).reduce(..)` over the same text. Both check the
//!   total and the number of distinct words.
//!
//! The text is a deterministic Zipf-distributed corpus generated in the setup (no
//! download), leaked once so that words are `&'static str` slices and neither side
//! allocates per word. Each iteration is one whole run, runtime start-up included.

use std::hint::black_box;
use std::time::Duration;

use ahash::AHashMap;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
#[path = "../examples/common/corpus.rs"]
mod corpus;
use corpus::Corpus;
use flowstage::flow::{Flow, Partition};
use rayon::prelude::*;

/// Events in the chain benchmark.
const EVENTS: u64 = 10_000_000;

// The chain, written once and used by all three contestants. The map is a splitmix64
// finalizer (a few multiplies and shifts, about what hashing or decoding a small record
// costs), so the benchmark measures a pipeline doing some work per event, not the codegen
// of a loop of a few instructions (SIMD or not, branch or `cmov`), which then dominates.

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 40-bit hashes: 10 M of them (and their halves) sum without overflow.
#[inline]
fn step_map(x: u64) -> u64 {
    mix(x) >> 24
}

#[inline]
fn step_filter(x: &u64) -> bool {
    x % 3 != 0
}

#[inline]
fn step_flat_map(x: u64) -> [u64; 2] {
    [x, x >> 1]
}

fn chain_sequential(events: u64) -> u64 {
    (0..events)
        .map(step_map)
        .filter(step_filter)
        .flat_map(step_flat_map)
        .sum()
}

fn chain_rayon(events: u64) -> u64 {
    (0..events)
        .into_par_iter()
        .map(step_map)
        .filter(step_filter)
        .flat_map_iter(step_flat_map)
        .sum()
}

/// `0..events` split into `parts` contiguous ranges.
fn ranges(events: u64, parts: usize) -> Vec<std::ops::Range<u64>> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|i| events * i / parts..events * (i + 1) / parts)
        .collect()
}

fn chain_flowstage(events: u64) -> u64 {
    let sums: Vec<u64> = Flow::from_iters(ranges(events, flowstage::default_parallelism()))
        .map(step_map)
        .filter(step_filter)
        .flat_map(step_flat_map)
        .reduce(|| 0u64, |x, sum| sum + x)
        .emit_state()
        .collect()
        .expect("flowstage chain");
    sums.into_iter().sum()
}

fn chain(c: &mut Criterion) {
    let expected = chain_sequential(EVENTS);
    assert_eq!(chain_rayon(EVENTS), expected);
    assert_eq!(chain_flowstage(EVENTS), expected);
    assert_eq!(chain_flowstage(1_000), chain_sequential(1_000));

    let mut group = c.benchmark_group("chain");
    group
        .throughput(Throughput::Elements(EVENTS))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("flowstage", |b| {
        b.iter(|| assert_eq!(chain_flowstage(black_box(EVENTS)), expected));
    });
    group.bench_function("rayon", |b| {
        b.iter(|| assert_eq!(chain_rayon(black_box(EVENTS)), expected));
    });
    group.bench_function("sequential", |b| {
        b.iter(|| assert_eq!(chain_sequential(black_box(EVENTS)), expected));
    });
    group.finish();
}

/// Size of the generated text.
const TEXT_BYTES: usize = 32 << 20;
/// Distinct words in the vocabulary.
const VOCABULARY: usize = 50_000;

/// The project's deterministic Zipf-distributed corpus (ASCII), as text.
fn corpus(bytes: usize) -> String {
    let text = Corpus::new(bytes).vocabulary(VOCABULARY).generate();
    String::from_utf8(text).expect("the generated corpus is ASCII")
}

/// `text` cut into `parts` chunks, each ending at a line end.
fn line_chunks(text: &'static str, parts: usize) -> Vec<&'static str> {
    let mut chunks = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 1..=parts {
        let mut end = if i == parts {
            text.len()
        } else {
            (text.len() * i / parts).max(start)
        };
        if end < text.len() {
            end = text[end..].find('\n').map_or(text.len(), |at| end + at + 1);
        }
        chunks.push(&text[start..end]);
        start = end;
    }
    chunks
}

type Counts = AHashMap<&'static str, u64>;

fn count_words_flowstage(chunks: &[&'static str]) -> Vec<(&'static str, u64)> {
    Flow::from_iters(chunks.iter().map(|chunk| chunk.lines()))
        .flat_map(|line: &'static str| line.split_ascii_whitespace())
        .partition(Partition::by_key(|word: &&'static str| *word).max_demand(4096))
        .reduce(Counts::new, |word, mut counts: Counts| {
            *counts.entry(word).or_insert(0) += 1;
            counts
        })
        .collect()
        .expect("flowstage word count")
}

fn count_words_rayon(text: &'static str) -> Counts {
    text.par_lines()
        .fold(Counts::new, |mut counts, line| {
            for word in line.split_ascii_whitespace() {
                *counts.entry(word).or_insert(0) += 1;
            }
            counts
        })
        .reduce(Counts::new, |a, b| {
            let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
            for (word, n) in small {
                *big.entry(word).or_insert(0) += n;
            }
            big
        })
}

/// (total words, distinct words).
fn summary<'a>(counts: impl IntoIterator<Item = (&'a &'static str, &'a u64)>) -> (u64, usize) {
    counts
        .into_iter()
        .fold((0, 0), |(total, distinct), (_, n)| {
            (total + n, distinct + 1)
        })
}

fn word_count_literal(c: &mut Criterion) {
    let text: &'static str = Box::leak(corpus(TEXT_BYTES).into_boxed_str());
    let chunks = line_chunks(text, flowstage::default_parallelism());
    assert_eq!(chunks.concat().len(), text.len());

    // Both agree on every count, not only on the summary checked in the timed loop.
    let reference = count_words_rayon(text);
    let expected = summary(&reference);
    let flow = count_words_flowstage(&chunks);
    assert_eq!(summary(flow.iter().map(|(w, n)| (w, n))), expected);
    let flow: Counts = flow.into_iter().collect();
    assert_eq!(flow, reference);
    eprintln!(
        "word_count_literal: {} MB, {} words, {} distinct",
        text.len() >> 20,
        expected.0,
        expected.1
    );

    let mut group = c.benchmark_group("word_count_literal");
    group
        .throughput(Throughput::Bytes(text.len() as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    group.bench_function("flowstage", |b| {
        b.iter(|| {
            let counts = count_words_flowstage(black_box(&chunks));
            assert_eq!(summary(counts.iter().map(|(w, n)| (w, n))), expected);
        });
    });
    group.bench_function("rayon", |b| {
        b.iter(|| {
            let counts = count_words_rayon(black_box(text));
            assert_eq!(summary(&counts), expected);
        });
    });
    group.finish();
}

criterion_group!(benches, chain, word_count_literal);
criterion_main!(benches);
