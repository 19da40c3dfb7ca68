//! Word count over a large file, at the speed of the machine.
//!
//! `cargo run --release --example word_count -- [FILE|-] [--top N] [--stages N]`
//!
//! FILE `-` reads standard input. With no FILE a deterministic corpus (Zipf-distributed
//! words, 64 MB) is generated into the temp directory once and counted. Words are maximal
//! runs of bytes that are not ASCII whitespace, compared as raw bytes. Output on stdout:
//! `total N`, `distinct N`, then the top N (default 10) as `<count>\t<word>`, by count
//! descending, ties by the word's bytes ascending. Reading a file, a progress bar goes to
//! stderr when it is a terminal (`FileSource::progress`, feature `progress`, on by
//! default). Arguments are parsed with clap (`--help`).
//!
//! The flow: parallel readers over whitespace-aligned byte ranges emit chunks; each chunk
//! is counted with borrowed word slices (`Chunk::word_counts`: one owned `Word` per
//! distinct word of the chunk, none per occurrence), and `reduce_by_key` adds the counts
//! up — combined inside each reader's stage first, then partitioned by word.

use std::path::PathBuf;

#[path = "common/corpus.rs"]
mod corpus;
use corpus::Corpus;
use flowstage::flow::{Flow, Partition, Shuffle};
use flowstage::source::{Chunk, FileSource, Word, stdin};

/// Size of the generated corpus when no file is given.
const GENERATED_BYTES: usize = 64 << 20;

/// Counts the words of a file, of standard input, or of a generated corpus.
#[derive(clap::Parser)]
struct Args {
    /// The file to count (`-`: standard input); without it, a generated 64 MB corpus.
    file: Option<String>,
    /// How many of the most frequent words to print.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Stages per layer (and readers of a file); default: one per core.
    #[arg(long, default_value_t = flowstage::default_parallelism(), value_parser = at_least_one)]
    stages: usize,
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(error) => Err(error.to_string()),
    }
}

/// The generated corpus, written once to the temp directory.
fn generated_corpus() -> std::io::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("flowstage-corpus-{GENERATED_BYTES}.txt"));
    let text = Corpus::new(GENERATED_BYTES).generate();
    let up_to_date = std::fs::metadata(&path).is_ok_and(|m| m.len() == text.len() as u64);
    if !up_to_date {
        let partial = path.with_extension(format!("{}.partial", std::process::id()));
        std::fs::write(&partial, &text)?;
        std::fs::rename(&partial, &path)?;
    }
    Ok(path)
}

fn main() {
    if let Err(error) = count() {
        eprintln!("word_count: {error}");
        std::process::exit(1);
    }
}

fn count() -> Result<(), Box<dyn std::error::Error>> {
    let args = <Args as clap::Parser>::parse();
    let partition = Partition::new().stages(args.stages).max_demand(4096);

    let counts: Vec<(Word, u64)> = if args.file.as_deref() == Some("-") {
        // One reader; chunks are shared out to the stages (two in flight each, so memory
        // does not grow with the input), which split and count them.
        Flow::from_source(stdin().block_size(1 << 20))
            .shuffle(
                Shuffle::shuffle()
                    .stages(args.stages)
                    .max_demand(2)
                    .min_demand(1),
            )
            .flat_map(|chunk: Chunk| chunk.word_counts())
            .reduce_by_key(|a, b| a + b, partition)
            .collect()?
    } else {
        let path = match &args.file {
            Some(file) => PathBuf::from(file),
            None => generated_corpus()?,
        };
        Flow::from_source(
            // Counting per chunk pays off more with large chunks (fewer owned words).
            FileSource::new(&path)
                .readers(args.stages)
                .block_size(1 << 20)
                .progress(), // a bar on stderr, from the readers' byte counter
        )
        .flat_map(|chunk: Chunk| chunk.word_counts())
        .reduce_by_key(|a, b| a + b, partition)
        .collect()?
    };

    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    println!("total {total}");
    println!("distinct {}", counts.len());
    let mut ranked = counts;
    let by_rank = |a: &(Word, u64), b: &(Word, u64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0));
    if args.top < ranked.len() {
        ranked.select_nth_unstable_by(args.top, by_rank);
        ranked.truncate(args.top);
    }
    ranked.sort_unstable_by(by_rank);
    for (word, count) in ranked {
        println!("{count}\t{word}");
    }
    Ok(())
}
