//! Word count on the stage layer: lines -> word splitters -> partitioned counters.
//!
//! `cargo run --release --example word_count -- [FILE|-] [--top N] [--stages N]`
//!
//! With no FILE it counts a small built-in text. Words are maximal runs of bytes that are
//! not ASCII whitespace. Output: `total N`, `distinct N`, then the top N words as
//! `<count>\t<word>`, by count descending, ties by the word's bytes ascending.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

use flowstage::stage::{
    Dispatcher, Pipeline, ProducerConsumerOptions, SubscribeOptions, consumer_fn, from_iter,
    producer_consumer_fn,
};

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
    let lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();

    let counts: Arc<Mutex<HashMap<Vec<u8>, u64>>> = Arc::default();
    let mut pipeline = Pipeline::new();
    let source = pipeline.producer(from_iter(lines));
    let (split_in, split_out) = pipeline.producer_consumer_with(
        producer_consumer_fn(|lines: Vec<Vec<u8>>| {
            lines
                .iter()
                .flat_map(|line| line.split(is_space).filter(|w| !w.is_empty()))
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        }),
        ProducerConsumerOptions::new()
            .dispatcher(Dispatcher::partition_by_key(|w: &Vec<u8>| w.clone())),
    );
    pipeline.subscribe(&split_in, &source, SubscribeOptions::new())?;
    for _ in 0..args.stages {
        let counts = counts.clone();
        let mut local: HashMap<Vec<u8>, u64> = HashMap::new();
        let counter = pipeline.consumer(consumer_fn(move |words: Vec<Vec<u8>>| {
            for word in words {
                *local.entry(word).or_default() += 1;
            }
            let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
            for (word, n) in local.drain() {
                *counts.entry(word).or_default() += n;
            }
        }));
        pipeline.subscribe(&counter, &split_out, SubscribeOptions::new())?;
    }
    pipeline.run()?;

    let counts = std::mem::take(&mut *counts.lock().unwrap_or_else(|p| p.into_inner()));
    let total: u64 = counts.values().sum();
    let mut ranked: Vec<(Vec<u8>, u64)> = counts.into_iter().collect();
    println!("total {total}");
    println!("distinct {}", ranked.len());
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (word, count) in ranked.into_iter().take(args.top) {
        println!("{count}\t{}", String::from_utf8_lossy(&word));
    }
    Ok(())
}
