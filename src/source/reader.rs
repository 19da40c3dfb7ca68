//! Any `std::io::Read` (standard input above all) as a streaming source of chunks.
//!
//! A reader thread fills blocks, cuts them at the last delimiter (the rest starts the next
//! block), and hands them over a channel of two: memory stays at a few blocks however long
//! the input is. The flow's one producer takes a chunk per call.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::chunk::{Chunk, Delimiter};
use super::file::DEFAULT_BLOCK_SIZE;
use super::{BoxedProducer, Source};
use crate::error::{FlowError, Result, StageError};
use crate::stage::{Produced, Producer};

/// A byte stream read in blocks on a thread of its own; emits [`Chunk`]s of whole records.
///
/// ```
/// use flowstage::flow::Flow;
/// use flowstage::source::ReaderSource;
/// let input = std::io::Cursor::new(b"one two\nthree".to_vec());
/// let words: usize = Flow::from_source(ReaderSource::new(input, "cursor"))
///     .map(|chunk| chunk.words().count())
///     .collect::<Vec<_>>()?
///     .into_iter()
///     .sum();
/// assert_eq!(words, 3);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[derive(Debug)]
pub struct ReaderSource<R> {
    reader: R,
    name: Arc<Path>,
    delimiter: Delimiter,
    block_size: usize,
}

impl<R: Read + Send + 'static> ReaderSource<R> {
    /// Reads `reader`; `name` stands for it in errors (like a path).
    pub fn new(reader: R, name: impl AsRef<Path>) -> Self {
        ReaderSource {
            reader,
            name: Arc::from(name.as_ref()),
            delimiter: Delimiter::Whitespace,
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }

    /// What records end on (default: whitespace).
    pub fn delimiter(mut self, delimiter: Delimiter) -> Self {
        self.delimiter = delimiter;
        self
    }

    /// Bytes per block; at least 1 (0 is a [`FlowError::Config`] when the flow runs).
    pub fn block_size(mut self, block_size: usize) -> Self {
        self.block_size = block_size;
        self
    }
}

/// Standard input as a streaming source (named `-` in errors).
pub fn stdin() -> ReaderSource<std::io::Stdin> {
    ReaderSource::new(std::io::stdin(), "-")
}

impl<R: Read + Send + 'static> Source for ReaderSource<R> {
    type Item = Chunk;

    fn into_producers(self) -> Result<Vec<BoxedProducer<Chunk>>> {
        if self.block_size == 0 {
            return Err(FlowError::Config(format!(
                "{}: a reader source's block size must be at least 1 byte",
                self.name.display()
            )));
        }
        let (tx, rx) = mpsc::channel::<std::result::Result<Chunk, FlowError>>(2);
        let ReaderSource {
            mut reader,
            name,
            delimiter,
            block_size,
        } = self;
        let thread_name = name.clone();
        let spawned = std::thread::Builder::new()
            .name("flowstage-reader".into())
            .spawn(move || {
                let mut offset = 0u64;
                let mut carry: Vec<u8> = Vec::new();
                loop {
                    let mut block = std::mem::take(&mut carry);
                    let kept = block.len();
                    block.reserve(block_size);
                    let read = (&mut reader)
                        .take(block_size as u64)
                        .read_to_end(&mut block);
                    let read = match read {
                        Ok(read) => read,
                        Err(source) => {
                            let _ = tx.blocking_send(Err(FlowError::Io {
                                path: thread_name.to_path_buf(),
                                offset: Some(offset + kept as u64),
                                source,
                            }));
                            return;
                        }
                    };
                    if read == 0 {
                        if !block.is_empty() {
                            let _ = tx.blocking_send(Ok(Chunk::owned(
                                block,
                                offset,
                                thread_name.clone(),
                            )));
                        }
                        return;
                    }
                    // Cut after the last delimiter; the unfinished record waits for more.
                    let cut = delimiter.rfind(&block[kept..]).map_or(0, |i| kept + i + 1);
                    if cut == 0 {
                        carry = block;
                        continue;
                    }
                    carry = block.split_off(cut);
                    let length = block.len() as u64;
                    if tx
                        .blocking_send(Ok(Chunk::owned(block, offset, thread_name.clone())))
                        .is_err()
                    {
                        // The flow has stopped.
                        return;
                    }
                    offset += length;
                }
            });
        spawned.map_err(|source| FlowError::Io {
            path: name.to_path_buf(),
            offset: None,
            source,
        })?;
        Ok(vec![BoxedProducer::new(ChannelReader { chunks: rx })])
    }
}

struct ChannelReader {
    chunks: mpsc::Receiver<std::result::Result<Chunk, FlowError>>,
}

impl Producer for ChannelReader {
    type Item = Chunk;

    async fn handle_demand(
        &mut self,
        _demand: usize,
    ) -> std::result::Result<Produced<Chunk>, StageError> {
        match self.chunks.recv().await {
            Some(Ok(chunk)) => Ok(Produced::Events(vec![chunk])),
            Some(Err(error)) => Err(Box::new(error)),
            None => Ok(Produced::Finished(Vec::new())),
        }
    }
}
