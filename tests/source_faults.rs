//! Faults inside the threads a source runs of its own — the rayon job of `from_par_iter`,
//! the reader thread of a `ReaderSource` — end the run with an error naming the stage,
//! never a process abort (a panic in a `rayon::spawn` job aborts by default) and never an
//! `Ok` with data missing (a closed channel read as the end of the input).

mod common;

use std::io::Read;

use common::guarded;
use flowstage::FlowError;
use flowstage::flow::Flow;
use flowstage::source::ReaderSource;
use rayon::prelude::*;

fn panicked(result: Result<impl std::fmt::Debug, FlowError>) -> (String, String) {
    match result {
        Err(FlowError::StagePanicked { stage, message }) => (stage.name, message),
        other => panic!("expected StagePanicked, got {other:?}"),
    }
}

#[test]
fn a_panic_in_a_par_iter_closure_fails_the_run_naming_the_stage() {
    for chained in [false, true] {
        let result = guarded(move || {
            let items = (0..100_000u64).into_par_iter().map(|x| {
                if x == 77_777 {
                    panic!("bad item {x}");
                }
                x
            });
            if chained {
                Flow::from_par_iter(items)
                    .map(|x| x + 1)
                    .collect::<Vec<u64>>()
            } else {
                Flow::from_par_iter(items).collect::<Vec<u64>>()
            }
        });
        let (stage, message) = panicked(result);
        assert!(stage.starts_with("from_par_iter"), "stage {stage}");
        assert!(message.contains("bad item 77777"), "message {message}");
    }
}

#[test]
fn a_par_iter_flow_still_runs_after_another_one_panicked() {
    // The panic was caught in rayon's job: the pool is alive and the next flow complete.
    let _ = guarded(|| {
        Flow::from_par_iter((0..1000u64).into_par_iter().map(|x| {
            assert!(x != 500, "bad item");
            x
        }))
        .collect::<Vec<u64>>()
    });
    let total: u64 = guarded(|| {
        Flow::from_par_iter((1..=1000u64).into_par_iter())
            .collect::<Vec<u64>>()
            .map(|all| all.into_iter().sum())
    })
    .expect("a healthy flow");
    assert_eq!(total, 500_500);
}

/// Lines of text, then a panic once `limit` bytes were read.
struct PanicsAfter {
    read: usize,
    limit: usize,
}

impl Read for PanicsAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        assert!(self.read < self.limit, "the disk is on fire");
        let n = buf.len().min(self.limit - self.read).min(4096);
        for (i, byte) in buf[..n].iter_mut().enumerate() {
            *byte = if (self.read + i) % 8 == 7 {
                b'\n'
            } else {
                b'x'
            };
        }
        self.read += n;
        Ok(n)
    }
}

#[test]
fn a_reader_that_panics_fails_the_run_naming_the_source() {
    // 1 MiB read in 64 KiB blocks, then the panic: it used to end `Ok` with 16 chunks.
    let result = guarded(|| {
        let reader = PanicsAfter {
            read: 0,
            limit: 1 << 20,
        };
        Flow::from_source(ReaderSource::new(reader, "flaky-device"))
            .map(|chunk| chunk.bytes().len())
            .collect::<Vec<usize>>()
    });
    let (stage, message) = panicked(result);
    assert!(stage.starts_with("source"), "stage {stage}");
    assert!(message.contains("flaky-device"), "message {message}");
    assert!(message.contains("the disk is on fire"), "message {message}");
    // Every byte before the panic was handed on, and the message says how many.
    assert!(message.contains("after 1048576 bytes"), "message {message}");
}

#[test]
fn a_reader_that_ends_normally_still_ends_ok_with_every_byte() {
    let input: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let expected = input.len();
    let bytes: usize = guarded(move || {
        Flow::from_source(ReaderSource::new(std::io::Cursor::new(input), "cursor").block_size(1000))
            .map(|chunk| chunk.bytes().len())
            .collect::<Vec<usize>>()
    })
    .expect("a complete read")
    .into_iter()
    .sum();
    assert_eq!(bytes, expected);
}
