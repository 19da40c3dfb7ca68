//! Any `std::io::Read` (standard input above all) as a streaming source of chunks.
//!
//! A reader thread fills blocks, cuts them at the last delimiter (the rest starts the next
//! block), and hands them over a channel of two: memory stays at a few blocks however long
//! the input is. The flow's one producer takes a chunk per call.

use std::cell::Cell;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::chunk::{Chunk, Delimiter};
use super::file::DEFAULT_BLOCK_SIZE;
use super::{BoxedProducer, Source};
use crate::error::{FlowError, IoOperation, Result, StageError};
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
        let (tx, rx) = mpsc::channel::<Message>(2);
        let ReaderSource {
            reader,
            name,
            delimiter,
            block_size,
        } = self;
        let thread_name = name.clone();
        let spawned = std::thread::Builder::new()
            .name("flowstage-reader".into())
            .spawn(move || {
                // Bytes handed on so far, still readable after a panic.
                let offset = Cell::new(0u64);
                let read = std::panic::AssertUnwindSafe(|| {
                    read_blocks(reader, &thread_name, delimiter, block_size, &tx, &offset)
                });
                let last = match std::panic::catch_unwind(read) {
                    Ok(last) => last,
                    // The user's `Read` panicked: the flow must not take that for the end
                    // of the input.
                    Err(payload) => Message::Panicked {
                        message: crate::error::panic_message(payload.as_ref()),
                        offset: offset.get(),
                    },
                };
                let _ = tx.blocking_send(last);
            });
        spawned.map_err(|source| FlowError::io(IoOperation::Spawn, &name, source))?;
        Ok(vec![BoxedProducer::new(ChannelReader {
            chunks: rx,
            name,
            ended: false,
        })])
    }
}

/// What the reader thread sends. The input ends only with `End`: a channel that closes
/// without it means the thread died.
enum Message {
    Chunk(Chunk),
    /// Reading failed.
    Failed(FlowError),
    /// The reader panicked after `offset` bytes were handed on.
    Panicked {
        message: String,
        offset: u64,
    },
    /// The reader reached the end of its input.
    End,
}

/// Reads `reader` to its end in blocks cut after their last delimiter, sending a chunk per
/// block; returns the last message (`End`, or the read error). `offset` follows the bytes
/// sent.
fn read_blocks(
    mut reader: impl Read,
    name: &Arc<Path>,
    delimiter: Delimiter,
    block_size: usize,
    tx: &mpsc::Sender<Message>,
    offset: &Cell<u64>,
) -> Message {
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let at = offset.get();
        let mut block = std::mem::take(&mut carry);
        let kept = block.len();
        block.reserve(block_size);
        let read = match (&mut reader)
            .take(block_size as u64)
            .read_to_end(&mut block)
        {
            Ok(read) => read,
            Err(source) => {
                return Message::Failed(FlowError::Io {
                    operation: IoOperation::Read,
                    path: Some(name.to_path_buf()),
                    offset: Some(at + kept as u64),
                    source,
                });
            }
        };
        if read == 0 {
            if !block.is_empty() {
                let length = block.len() as u64;
                if tx
                    .blocking_send(Message::Chunk(Chunk::owned(block, at, name.clone())))
                    .is_err()
                {
                    return Message::End;
                }
                offset.set(at + length);
            }
            return Message::End;
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
            .blocking_send(Message::Chunk(Chunk::owned(block, at, name.clone())))
            .is_err()
        {
            // The flow has stopped.
            return Message::End;
        }
        offset.set(at + length);
    }
}

struct ChannelReader {
    chunks: mpsc::Receiver<Message>,
    name: Arc<Path>,
    ended: bool,
}

impl Producer for ChannelReader {
    type Item = Chunk;

    async fn handle_demand(
        &mut self,
        _demand: usize,
    ) -> std::result::Result<Produced<Chunk>, StageError> {
        if self.ended {
            return Ok(Produced::Finished(Vec::new()));
        }
        match self.chunks.recv().await {
            Some(Message::Chunk(chunk)) => Ok(Produced::Events(vec![chunk])),
            Some(Message::End) => {
                self.ended = true;
                Ok(Produced::Finished(Vec::new()))
            }
            Some(Message::Failed(error)) => Err(Box::new(error)),
            // A panic in the user's reader is a panic of this stage.
            Some(Message::Panicked { message, offset }) => std::panic::panic_any(format!(
                "the reader of `{}` panicked after {offset} bytes: {message}",
                self.name.display()
            )),
            None => Err(Box::new(FlowError::io(
                IoOperation::Read,
                &*self.name,
                std::io::Error::other("the reader thread ended before the end of its input"),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_closed_without_the_end_message_is_an_error_not_the_end() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let (tx, rx) = mpsc::channel(2);
        drop(tx);
        let mut reader = ChannelReader {
            chunks: rx,
            name: Arc::from(Path::new("pipe")),
            ended: false,
        };
        let produced = runtime.block_on(reader.handle_demand(1));
        let error = produced.expect_err("a dead reader thread is an error");
        assert!(error.to_string().contains("pipe"), "{error}");
    }
}
