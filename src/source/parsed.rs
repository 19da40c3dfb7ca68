//! What the CSV and JSON-lines sources share: line-aligned parallel readers that know
//! the line number of every record, and an error policy for records that do not parse.
//!
//! Each reader of a [`FileSource`] emits contiguous chunks of whole lines. Before its
//! first chunk, a reader counts the newlines in front of it (a `memchr` pass over the
//! file's prefix, at memory speed), then adds each chunk's newlines as it goes: every
//! record gets its exact line number while the file is parsed in parallel.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::chunk::{Chunk, Delimiter};
use super::file::FileSource;
use super::{BoxedProducer, Source};
use crate::error::{FlowError, IoOperation, Result, StageError};
use crate::flow::ErrorPolicy;
use crate::flow::fallible::ErrorHandler;
use crate::stage::{Produced, Producer};

/// A record that did not parse: where it is and what it says. What a parsing source's
/// dead-letter sink receives as the event (the error is a
/// [`FlowError::Record`] with the same line and the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// The file.
    pub path: PathBuf,
    /// The record's line, from 1.
    pub line: u64,
    /// The record's text (invalid UTF-8 replaced), without its line ending.
    pub text: String,
}

/// Parses the records of one chunk.
pub(crate) trait ChunkParser: Send + Sync + 'static {
    type Item: Send + 'static;

    /// Parses `bytes`, whose first line is line `first_line` of the file, into `out`;
    /// records that do not parse go to `bad` as `(line, text, reason)`.
    fn parse(
        &self,
        bytes: &[u8],
        first_line: u64,
        out: &mut Vec<Self::Item>,
        bad: &mut dyn FnMut(u64, &[u8], String),
    );
}

/// The producers of a parsing source: one per reader of `file`.
pub(crate) fn producers<P: ChunkParser>(
    file: FileSource,
    path: &Path,
    parser: Arc<P>,
    policy: &ErrorPolicy<BadRecord>,
    operator: &'static str,
) -> Result<Vec<BoxedProducer<P::Item>>> {
    let path: Arc<Path> = Arc::from(path);
    Ok(file
        .delimiter(Delimiter::Line)
        .into_producers()?
        .into_iter()
        .map(|chunks| {
            BoxedProducer::new(Parsing {
                chunks,
                parser: parser.clone(),
                path: path.clone(),
                position: None,
                errors: policy.handler(operator),
            })
        })
        .collect())
}

struct Parsing<P: ChunkParser> {
    chunks: BoxedProducer<Chunk>,
    parser: Arc<P>,
    path: Arc<Path>,
    /// The byte offset after the last chunk, and the line number there.
    position: Option<(u64, u64)>,
    errors: ErrorHandler<BadRecord>,
}

impl<P: ChunkParser> Parsing<P> {
    fn parse(&mut self, chunks: Vec<Chunk>) -> std::result::Result<Vec<P::Item>, StageError> {
        let mut out = Vec::new();
        for chunk in chunks {
            let line = match self.position {
                Some((offset, line)) if offset == chunk.offset() => line,
                Some((offset, line)) => line + count_lines(&self.path, offset, chunk.offset())?,
                None => 1 + count_lines(&self.path, 0, chunk.offset())?,
            };
            let bytes = chunk.bytes();
            let (errors, path) = (&mut self.errors, &self.path);
            self.parser
                .parse(bytes, line, &mut out, &mut |line, text, reason| {
                    let error = FlowError::Record {
                        path: path.to_path_buf(),
                        line,
                        message: reason,
                    };
                    let record = BadRecord {
                        path: path.to_path_buf(),
                        line,
                        text: String::from_utf8_lossy(trim_line_end(text)).into_owned(),
                    };
                    errors.error(record, Box::new(error));
                });
            self.errors.settle();
            if let Some(error) = self.errors.take_failure() {
                return Err(error);
            }
            let newlines = memchr::memchr_iter(b'\n', bytes).count() as u64;
            self.position = Some((chunk.offset() + bytes.len() as u64, line + newlines));
        }
        Ok(out)
    }
}

impl<P: ChunkParser> Producer for Parsing<P> {
    type Item = P::Item;

    async fn handle_demand(
        &mut self,
        demand: usize,
    ) -> std::result::Result<Produced<P::Item>, StageError> {
        Ok(match self.chunks.handle_demand(demand).await? {
            Produced::Events(chunks) => Produced::Events(self.parse(chunks)?),
            Produced::Finished(chunks) => Produced::Finished(self.parse(chunks)?),
        })
    }
}

/// The number of newlines in bytes `from..to` of the file.
fn count_lines(path: &Path, from: u64, to: u64) -> std::result::Result<u64, StageError> {
    let io = |source| -> StageError {
        Box::new(FlowError::Io {
            operation: IoOperation::Read,
            path: Some(path.to_path_buf()),
            offset: Some(from),
            source,
        })
    };
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut left = to.saturating_sub(from);
    let mut block = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    while left > 0 {
        let want = (block.len() as u64).min(left) as usize;
        let read = file.read(&mut block[..want]).map_err(io)?;
        if read == 0 {
            break;
        }
        lines += memchr::memchr_iter(b'\n', &block[..read]).count() as u64;
        left -= read as u64;
    }
    Ok(lines)
}

/// `line` without its `\n` or `\r\n`.
pub(crate) fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lines_in_a_byte_range() {
        let dir = std::env::temp_dir().join(format!("flowstage-count-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lines.txt");
        std::fs::write(&path, "a\nb\nc\nd").unwrap();
        assert_eq!(count_lines(&path, 0, 7).unwrap(), 3);
        assert_eq!(count_lines(&path, 2, 4).unwrap(), 1);
        assert_eq!(count_lines(&path, 0, 0).unwrap(), 0);
        assert_eq!(trim_line_end(b"x\r\n"), b"x");
    }
}
