//! Cancellation: dropping a flow's iterator or stream after `k` events stops its file
//! readers, and what they read is bounded by the demand settings, not by the file.
//!
//! The input is a real 1 GiB file of 32-byte lines, written to a temporary directory and
//! deleted at the end. Bytes read are measured two ways:
//! - exactly, by the source's own counter ([`FileCounters::bytes_read`]): every byte a
//!   reader got back from `read` (or, with `mmap`, every byte of the mapping it looked
//!   at — page faults that `/proc` would not see);
//! - as a witness from the kernel, `/proc/self/io` `rchar`: every byte this process got
//!   from `read`-like calls. It covers more than the readers (this binary has one test,
//!   so little else), which makes it an upper bound on what they read through `read`.
//!
//! The bound, with `R` readers, block size `B`, line length `L`, the sink's `max_demand`
//! `M` (chunks of `M/2` handed over) and 2 batches in flight to the reader of the output:
//! events that left the sources ≤ `k` + the batch being read + 2 in the channel + 1 being
//! sent (each ≤ `M/2`) + the sink's outstanding demand `R·M`; a reader reads a new block
//! only while it owes events, so it reads at most one block beyond them, plus one block to
//! find its first record:
//!
//! `bytes_read ≤ (k + 4·M/2 + R·M)·L + R·(2·B + L + 1)`
//!
//! Dropping must also end the run: the iterator's drop joins the flow's thread, and after
//! the stream's drop no file handle to the input stays open (checked in `/proc/self/fd`);
//! the watchdog turns a hang into a failure.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::guarded;
use flowstage::flow::Flow;
use flowstage::source::{Chunk, FileCounters, FileSource, LinesSource};
use flowstage::stage::DEFAULT_MAX_DEMAND;
use futures::StreamExt;

const LINE: u64 = 32;
const FILE_SIZE: u64 = 1 << 30;
const READERS: u64 = 2;
const TAKEN: u64 = 100_000;

/// A temporary file deleted on drop, even when the test fails.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// 1 GiB of numbered 32-byte lines (a 1 MiB block of 32 768 lines, written 1024 times).
fn one_gigabyte_of_lines() -> TempFile {
    let dir = std::env::temp_dir().join(format!("flowstage-cancel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = TempFile(dir.join("lines.txt"));
    let mut block = Vec::with_capacity(1 << 20);
    for i in 0..(1u64 << 20) / LINE {
        writeln!(block, "line {i:026}").unwrap();
    }
    assert_eq!(block.len(), 1 << 20);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file.0).unwrap());
    for _ in 0..FILE_SIZE >> 20 {
        out.write_all(&block).unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    assert_eq!(std::fs::metadata(&file.0).unwrap().len(), FILE_SIZE);
    file
}

/// `rchar` of `/proc/self/io`: bytes this process got from read-like calls.
fn rchar() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io (Linux)");
    io.lines()
        .find_map(|line| line.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("an rchar line")
}

/// Open file descriptors of this process pointing at `path`.
fn open_handles(path: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd (Linux)")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

fn bound(events: u64, event_bytes: u64, block: u64) -> u64 {
    let max_demand = DEFAULT_MAX_DEMAND as u64;
    (events + 4 * max_demand / 2 + READERS * max_demand) * event_bytes
        + READERS * (2 * block + LINE + 1)
}

fn check(what: &str, counters: &FileCounters, read_before: u64, bound: u64) {
    let read = counters.bytes_read();
    let witnessed = rchar() - read_before;
    eprintln!(
        "{what}: read {read} bytes of a {FILE_SIZE}-byte file (bound {bound}); rchar grew by {witnessed}"
    );
    common::figure(
        &format!("cancellation.{what}.read"),
        common::megabytes(read),
    );
    common::figure(
        &format!("cancellation.{what}.bound"),
        common::megabytes(bound),
    );
    assert!(read > 0, "{what}: nothing was read");
    assert!(read <= bound, "{what}: read {read} bytes, bound {bound}");
    assert!(
        bound < FILE_SIZE / 50,
        "the bound itself must be far below the file"
    );
}

#[test]
fn dropping_the_output_stops_the_file_readers_within_the_demand_bound() {
    guarded(|| {
        let file = one_gigabyte_of_lines();
        let path = std::fs::canonicalize(&file.0).unwrap();
        let block = flowstage::source::DEFAULT_BLOCK_SIZE as u64;

        // 1. Blocking iterator over lines, dropped after TAKEN lines.
        let before = rchar();
        let source = LinesSource::new(&path).readers(READERS as usize);
        let counters: Arc<FileCounters> = source.counters();
        let mut lines = Flow::from_source(source).into_iter();
        let taken = lines.by_ref().take(TAKEN as usize).count() as u64;
        assert_eq!(taken, TAKEN);
        drop(lines); // joins the flow's thread: nothing can read after this
        assert_eq!(open_handles(&path), 0, "a reader outlived the iterator");
        check("iterator", &counters, before, bound(TAKEN, LINE, block));
        let witnessed = rchar() - before;
        assert!(
            witnessed < FILE_SIZE / 100,
            "the kernel saw {witnessed} bytes read: the readers went on"
        );

        // 2. Async stream over lines, dropped after TAKEN lines.
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let before = rchar();
        let source = LinesSource::new(&path).readers(READERS as usize);
        let counters = source.counters();
        runtime.block_on(async {
            let mut stream = Flow::from_source(source).into_stream().unwrap();
            for _ in 0..TAKEN {
                stream.next().await.expect("a line").expect("no error");
            }
            drop(stream);
            // The readers' tasks end: their file handles close (the watchdog catches a
            // reader that never stops).
            while open_handles(&path) > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        });
        check("stream", &counters, before, bound(TAKEN, LINE, block));
        let witnessed = rchar() - before;
        assert!(
            witnessed < FILE_SIZE / 100,
            "the kernel saw {witnessed} bytes read: the readers went on"
        );

        // 3. Mapped chunks (no `read` at all, so only the counter can see them): 4 KiB
        //    blocks, dropped after 1000 chunks. A chunk is at most a block plus one line.
        let small = 4096u64;
        let source = FileSource::new(&path)
            .readers(READERS as usize)
            .block_size(small as usize);
        // SAFETY: the test's own temporary file; nothing changes it while the flow runs.
        let source = unsafe { source.mmap(true) };
        let counters = source.counters();
        let before = rchar();
        runtime.block_on(async {
            let mut stream = Flow::from_source(source).into_stream().unwrap();
            for _ in 0..1000 {
                let chunk: Chunk = stream.next().await.expect("a chunk").expect("no error");
                assert!(!chunk.bytes().is_empty());
            }
        });
        drop(runtime);
        check("mmap", &counters, before, bound(1000, small + LINE, small));
    });
}
