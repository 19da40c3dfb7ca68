//! Word count over a large file: flowstage against the obvious rayon program, in one group.
//!
//! `cargo bench --bench word_count`
//!
//! Input: `FLOWSTAGE_WC_INPUT` if set; else real prose — the `*.rst.txt` sources of
//! Debian's `linux-doc-6.1` package, fetched once with `apt-get download` into
//! `target/wc-data` and concatenated to about 500 MB; if that fails, a generated
//! Zipf-distributed corpus of the same size. The bench prints which one it used.
//!
//! - `flowstage_combiner`: what `examples/word_count.rs` runs — parallel readers over
//!   whitespace-aligned ranges, each chunk counted with borrowed word slices
//!   (`Chunk::word_counts`), then `reduce_by_key` (combined in each reader's stage, then
//!   partitioned).
//! - `flowstage_literal`: the literal Flow pipeline — `flat_map` words, `partition` by
//!   word, `reduce` into a map per partition.
//! - `flowstage_literal_strings`: the same with a `String` allocated per word (invalid
//!   UTF-8 replaced, so its distinct count may differ): the cost `Word` avoids.
//! - `hand_made_literal`: the literal pipeline's shape by hand, one thread per core, a
//!   `Word` per word routed by the partition hash, batches of the other partition's words
//!   through a channel: the floor for any literal pipeline on this machine.
//! - `rayon`: mmap, one `AHashMap<&[u8], u64>` per rayon split, merged.
//! - `sequential`: one loop, one map.
//!
//! All (but the `String` variant) must agree on the total and the number of distinct words.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ahash::AHashMap;
use criterion::{Criterion, Throughput, criterion_group};
#[path = "../examples/common/corpus.rs"]
mod corpus;
use corpus::Corpus;
use flowstage::flow::{Flow, Partition};
use flowstage::source::{Chunk, FileSource, Word, is_word_separator};
use flowstage::stage::{partition_hash, partition_of};
use rayon::prelude::*;

/// Size of the input the bench builds.
const TARGET_BYTES: u64 = 500 << 20;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("wc-data")
}

/// Real prose: linux-doc's reStructuredText sources, repeated to about 500 MB.
fn real_prose(dir: &Path) -> Option<PathBuf> {
    let out = dir.join("prose-500mb.txt");
    if std::fs::metadata(&out).is_ok_and(|m| m.len() >= TARGET_BYTES) {
        return Some(out);
    }
    let fetched = Command::new("apt-get")
        .args(["download", "linux-doc-6.1"])
        .current_dir(dir)
        .status()
        .ok()?
        .success();
    if !fetched {
        return None;
    }
    let deb = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|e| e == "deb"))?;
    let unpacked = dir.join("linux-doc");
    Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked)
        .status()
        .ok()?
        .success()
        .then_some(())?;
    let mut sources = Vec::new();
    collect_rst(&unpacked, &mut sources);
    sources.sort();
    let mut once = Vec::new();
    for source in &sources {
        once.extend(std::fs::read(source).ok()?);
    }
    if once.is_empty() {
        return None;
    }
    let mut text = Vec::with_capacity(TARGET_BYTES as usize + once.len());
    while (text.len() as u64) < TARGET_BYTES {
        text.extend_from_slice(&once);
    }
    std::fs::write(&out, text).ok()?;
    Some(out)
}

fn collect_rst(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            collect_rst(&path, into);
        } else if path.to_string_lossy().contains("_sources")
            && path.to_string_lossy().ends_with(".rst.txt")
        {
            into.push(path);
        }
    }
}

fn input() -> PathBuf {
    if let Ok(path) = std::env::var("FLOWSTAGE_WC_INPUT") {
        return PathBuf::from(path);
    }
    let dir = data_dir();
    std::fs::create_dir_all(&dir).expect("target/wc-data");
    if let Some(prose) = real_prose(&dir) {
        return prose;
    }
    let generated = dir.join("generated-500mb.txt");
    if std::fs::metadata(&generated).map_or(true, |m| m.len() < TARGET_BYTES) {
        std::fs::write(&generated, Corpus::new(TARGET_BYTES as usize).generate())
            .expect("write the generated corpus");
    }
    generated
}

/// (total words, distinct words)
type Summary = (u64, usize);

fn flowstage_combiner(path: &Path) -> Summary {
    let counts: Vec<(Word, u64)> = Flow::from_source(FileSource::new(path).block_size(1 << 20))
        .flat_map(|chunk: Chunk| chunk.word_counts())
        .reduce_by_key(|a, b| a + b, Partition::new().max_demand(4096))
        .collect()
        .expect("flowstage word count");
    (counts.iter().map(|(_, n)| n).sum(), counts.len())
}

fn flowstage_literal(path: &Path) -> Summary {
    let counts: Vec<(Word, u64)> = Flow::from_source(FileSource::new(path))
        .flat_map(Chunk::into_words)
        .partition(Partition::new().max_demand(4096))
        .reduce(AHashMap::new, |word, mut counts: AHashMap<Word, u64>| {
            *counts.entry(word).or_default() += 1;
            counts
        })
        .collect()
        .expect("flowstage word count");
    (counts.iter().map(|(_, n)| n).sum(), counts.len())
}

/// The literal pipeline with a `String` per word: what per-word allocation costs.
fn flowstage_literal_strings(path: &Path) -> Summary {
    let counts: Vec<(String, u64)> = Flow::from_source(FileSource::new(path))
        .flat_map(|chunk: Chunk| {
            chunk
                .words()
                .map(|word| String::from_utf8_lossy(word).into_owned())
                .collect::<Vec<_>>()
        })
        .partition(Partition::new().max_demand(4096))
        .reduce(AHashMap::new, |word, mut counts: AHashMap<String, u64>| {
            *counts.entry(word).or_default() += 1;
            counts
        })
        .collect()
        .expect("flowstage word count");
    (counts.iter().map(|(_, n)| n).sum(), counts.len())
}

fn words(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .split(|&b| is_word_separator(b))
        .filter(|word| !word.is_empty())
}

/// The bounds of `pieces` whitespace-aligned pieces of `text` (first 0, last its length).
fn aligned_bounds(text: &[u8], pieces: usize) -> Vec<usize> {
    let mut bounds = vec![0];
    for i in 1..pieces {
        let mut end = (text.len() * i / pieces).max(bounds[bounds.len() - 1]);
        while end < text.len() && !is_word_separator(text[end]) {
            end += 1;
        }
        bounds.push(end);
    }
    bounds.push(text.len());
    bounds
}

fn rayon_baseline(path: &Path) -> Summary {
    let file = std::fs::File::open(path).expect("open");
    // SAFETY: the benchmark's input is not modified while it runs.
    let map = unsafe { memmap2::Mmap::map(&file) }.expect("mmap");
    let text: &[u8] = &map;
    // Many pieces per thread, for rayon's load balancing.
    let bounds = aligned_bounds(text, 256);
    let counts = bounds
        .par_windows(2)
        .fold(AHashMap::<&[u8], u64>::new, |mut counts, range| {
            for word in words(&text[range[0]..range[1]]) {
                *counts.entry(word).or_default() += 1;
            }
            counts
        })
        .reduce(AHashMap::new, |a, b| {
            let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
            for (word, n) in small {
                *big.entry(word).or_default() += n;
            }
            big
        });
    (counts.values().sum(), counts.len())
}

/// The literal pipeline's shape written by hand, as fast as it goes: one thread per core,
/// each reading its whitespace-aligned part of the mapped file, making a `Word` per word
/// and routing it by the partition hash. Its own partition's words go straight into its
/// map; the others' leave in batches of 4 096 through a channel, drained into the
/// receiving thread's map between its own batches. What the literal pipeline cannot beat
/// on this machine: every word made, hashed twice (route, map) and, for half of them,
/// moved to the other core.
fn hand_made_literal(path: &Path) -> Summary {
    use std::sync::mpsc::{Sender, channel};
    const BATCH: usize = 4096;
    let file = std::fs::File::open(path).expect("open");
    // SAFETY: the benchmark's input is not modified while it runs.
    let map = unsafe { memmap2::Mmap::map(&file) }.expect("mmap");
    let text: &[u8] = &map;
    let threads = flowstage::default_parallelism();
    let bounds = aligned_bounds(text, threads);
    let (senders, receivers): (Vec<Sender<Vec<Word>>>, Vec<_>) =
        (0..threads).map(|_| channel()).unzip();
    let counts: Vec<AHashMap<Word, u64>> = std::thread::scope(|scope| {
        let running: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(me, inbox)| {
                // Senders to every other thread (none to itself: its inbox ends when the
                // others are done).
                let others: Vec<Option<Sender<Vec<Word>>>> = senders
                    .iter()
                    .enumerate()
                    .map(|(p, sender)| (p != me).then(|| sender.clone()))
                    .collect();
                let part = &text[bounds[me]..bounds[me + 1]];
                scope.spawn(move || {
                    let mut counts: AHashMap<Word, u64> = AHashMap::new();
                    let mut outgoing: Vec<Vec<Word>> = (0..threads).map(|_| Vec::new()).collect();
                    for bytes in words(part) {
                        let word = Word::new(bytes);
                        let p = partition_of(partition_hash(&word), threads);
                        if p == me {
                            *counts.entry(word).or_default() += 1;
                            continue;
                        }
                        outgoing[p].push(word);
                        if outgoing[p].len() == BATCH {
                            if let Some(to) = &others[p] {
                                to.send(std::mem::take(&mut outgoing[p])).expect("send");
                            }
                            for batch in inbox.try_iter() {
                                for word in batch {
                                    *counts.entry(word).or_default() += 1;
                                }
                            }
                        }
                    }
                    for (p, batch) in outgoing.into_iter().enumerate() {
                        if let Some(to) = &others[p] {
                            to.send(batch).expect("send");
                        }
                    }
                    drop(others);
                    for batch in inbox {
                        for word in batch {
                            *counts.entry(word).or_default() += 1;
                        }
                    }
                    counts
                })
            })
            .collect();
        drop(senders);
        running
            .into_iter()
            .map(|thread| thread.join().expect("thread"))
            .collect()
    });
    (
        counts.iter().flat_map(|c| c.values()).sum(),
        counts.iter().map(|c| c.len()).sum(),
    )
}

fn sequential(path: &Path) -> Summary {
    let text = std::fs::read(path).expect("read");
    let mut counts: AHashMap<&[u8], u64> = AHashMap::new();
    for word in words(&text) {
        *counts.entry(word).or_default() += 1;
    }
    (counts.values().sum(), counts.len())
}

/// A contestant: the summary of counting the words of a file.
type Contestant = fn(&Path) -> Summary;

/// Every contestant, by name.
const CONTESTANTS: [(&str, Contestant); 6] = [
    ("flowstage_combiner", flowstage_combiner),
    ("flowstage_literal", flowstage_literal),
    ("flowstage_literal_strings", flowstage_literal_strings),
    ("hand_made_literal", hand_made_literal),
    ("rayon", rayon_baseline),
    ("sequential", sequential),
];

fn word_count(c: &mut Criterion) {
    let path = input();
    let bytes = std::fs::metadata(&path).expect("input").len();
    let expected = rayon_baseline(&path);
    eprintln!(
        "word_count input: {} ({} MB, {} words, {} distinct)",
        path.display(),
        bytes >> 20,
        expected.0,
        expected.1
    );
    assert_eq!(flowstage_combiner(&path), expected);
    assert_eq!(flowstage_literal(&path), expected);
    assert_eq!(hand_made_literal(&path), expected);
    assert_eq!(sequential(&path), expected);

    let mut group = c.benchmark_group("word_count");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(3))
        .measurement_time(Duration::from_secs(30))
        .throughput(Throughput::Bytes(bytes));
    for (name, run) in CONTESTANTS {
        // (The `String` variant replaces invalid UTF-8: its distinct count may differ.)
        let checked = name != "flowstage_literal_strings";
        group.bench_function(name, |b| {
            b.iter(|| {
                let summary = black_box(run(&path));
                if checked {
                    assert_eq!(summary, expected);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, word_count);

fn main() {
    if let Ok(name) = std::env::var(ONE) {
        run_one(&name);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// `FLOWSTAGE_BENCH_ONE=contestant`: count the words of the input once with one
/// contestant and print its summary, nothing else (for callgrind, see
/// `benches/README.md`; point `FLOWSTAGE_WC_INPUT` at a small file).
const ONE: &str = "FLOWSTAGE_BENCH_ONE";

fn run_one(name: &str) {
    let (_, run) = CONTESTANTS
        .iter()
        .find(|(known, _)| *known == name)
        .unwrap_or_else(|| panic!("no contestant {name}"));
    let path = input();
    let (words, distinct) = run(&path);
    println!(
        "{name}: {} ({words} words, {distinct} distinct)",
        path.display()
    );
}
