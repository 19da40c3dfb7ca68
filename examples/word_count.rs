//! Word count with a flow: chunks of text -> words -> partition by word -> count.
//!
//! `cargo run --release --example word_count -- [FILE|-] [--top N] [--stages N]`
//!
//! With no FILE it counts a small built-in text. Words are maximal runs of bytes that are
//! not ASCII whitespace (space, \t, \n, \r, \x0b, \x0c), compared as raw bytes. Output:
//! `total N`, `distinct N`, then the top N words as `<count>\t<word>`, by count
//! descending, ties by the word's bytes ascending.

use std::io::Read;

use ahash::AHashMap;
use flowstage::flow::{Flow, Partition};

const BUILT_IN: &str = "\
the quick brown fox jumps over the lazy dog
the dog barks and the fox runs into the woods
a stage asks for events and a producer sends no more than asked
demand flows up and events flow down in batches
";

struct Args {
    file: Option<String>,
    top: usize,
    stages: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        file: None,
        top: 10,
        stages: flowstage::default_parallelism(),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--top" | "--stages" => {
                let value = iter.next().ok_or(format!("{arg} needs a number"))?;
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("{arg}: not a number: {value}"))?;
                if arg == "--top" {
                    args.top = n;
                } else {
                    args.stages = n.max(1);
                }
            }
            _ if args.file.is_none() => args.file = Some(arg),
            _ => return Err(format!("unexpected argument: {arg}")),
        }
    }
    Ok(args)
}

fn is_space(byte: &u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Splits `text` into `parts` pieces that end on whitespace, so no word is cut.
fn chunks(text: &'static [u8], parts: usize) -> Vec<&'static [u8]> {
    let mut pieces = Vec::with_capacity(parts);
    let mut start = 0;
    for part in 1..=parts {
        let mut end = (text.len() * part / parts).max(start);
        while end < text.len() && !is_space(&text[end]) {
            end += 1;
        }
        pieces.push(&text[start..end]);
        start = end;
    }
    pieces
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let text: Vec<u8> = match args.file.as_deref() {
        None => BUILT_IN.as_bytes().to_vec(),
        Some("-") => {
            let mut buffer = Vec::new();
            std::io::stdin().read_to_end(&mut buffer)?;
            buffer
        }
        Some(path) => std::fs::read(path)?,
    };
    // The text lives as long as the program: words are borrowed slices of it, never copied.
    let text: &'static [u8] = Box::leak(text.into_boxed_slice());

    let per_reader = chunks(text, args.stages)
        .into_iter()
        .map(|chunk| chunk.split(is_space).filter(|word| !word.is_empty()));
    let counts: Vec<(&[u8], u64)> = Flow::from_iters(per_reader)
        .partition(Partition::by_key(|word: &&[u8]| *word).stages(args.stages))
        .reduce(AHashMap::new, |word, mut counts: AHashMap<&[u8], u64>| {
            *counts.entry(word).or_default() += 1;
            counts
        })
        .collect()?;

    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    println!("total {total}");
    println!("distinct {}", counts.len());
    let mut ranked = counts;
    ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    for (word, count) in ranked.into_iter().take(args.top) {
        println!("{count}\t{}", String::from_utf8_lossy(word));
    }
    Ok(())
}
