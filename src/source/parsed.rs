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

/// `{path, line, text}`, so that dead letters of a parsing source can go to a
/// [`JsonLinesSink`](crate::sink::JsonLinesSink) as they are.
impl serde::Serialize for BadRecord {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut record = serializer.serialize_struct("BadRecord", 3)?;
        record.serialize_field("path", &self.path.display().to_string())?;
        record.serialize_field("line", &self.line)?;
        record.serialize_field("text", &self.text)?;
        record.end()
    }
}

/// Parses the records of one chunk.
pub(crate) trait ChunkParser: Send + Sync + 'static {
    type Item: Send + 'static;

    /// Parses `bytes`, whose first line is line `first_line` of the file, handing each
    /// record to `emit` with its line; records that do not parse go to `bad` as `(line,
    /// text, reason)`.
    fn parse(
        &self,
        bytes: &[u8],
        first_line: u64,
        emit: &mut impl FnMut(u64, Self::Item),
        bad: &mut dyn FnMut(u64, &[u8], String),
    );
}

/// Marks a parsing source whose records come as they are (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bare;

/// Marks a parsing source whose records come [`Located`] (after `located()`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Locate;

/// A record with the file and line it came from: what a parsing source emits after
/// [`CsvSource::located`](super::CsvSource::located) or
/// [`JsonLinesSource::located`](super::JsonLinesSource::located). Carried through the
/// steps after the source (with [`map`](Located::map) and
/// [`try_map`](Located::try_map)), it lets a later validation's dead letters still say
/// where a bad record came from.
///
/// ```
/// use flowstage::flow::{DeadLetter, ErrorPolicy, Flow};
/// use flowstage::source::{CsvSource, Located};
/// # let dir = std::env::temp_dir().join(format!("flowstage-doc-located-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("ages.csv");
/// #[derive(serde::Deserialize)]
/// struct Person { name: String, age: u32 }
///
/// std::fs::write(&path, "name,age\nann,34\nbob,212\n")?;
/// let (tx, rx) = std::sync::mpsc::channel();
/// let adults: Vec<String> = Flow::from_source(CsvSource::<Person>::new(&path).located())
///     // Parsed fine, but not plausible: rejected with the person, and so with the line.
///     .try_map(|person: Located<Person>| {
///         person.try_map(|p| if p.age < 150 { Ok(p.name) } else { Err((p, "implausible age")) })
///     })
///     .on_error(ErrorPolicy::dead_letter_fn(move |letters: Vec<DeadLetter<Located<Person>>>| {
///         for letter in letters {
///             tx.send(format!("{}: {}", letter.event, letter.error))?;
///         }
///         Ok(())
///     }))
///     .map(|name: Located<String>| name.value)
///     .collect()?;
/// assert_eq!(adults, ["ann"]);
/// assert!(rx.recv()?.ends_with("ages.csv:3: implausible age"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    /// The file.
    pub path: Arc<Path>,
    /// The record's line, from 1.
    pub line: u64,
    /// The record.
    pub value: T,
}

impl<T> Located<T> {
    /// The same place, with `f(value)`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Located<U> {
        Located {
            path: self.path,
            line: self.line,
            value: f(self.value),
        }
    }

    /// The same place with `f(value)`, or, when `f` fails (giving the value back with
    /// its error), the whole located record back: what `Flow::try_map` takes, so the
    /// dead letter keeps the record's place.
    pub fn try_map<U, R>(
        self,
        f: impl FnOnce(T) -> std::result::Result<U, R>,
    ) -> std::result::Result<Located<U>, crate::flow::Rejected<Located<T>>>
    where
        R: Into<crate::flow::Rejected<T>>,
    {
        let Located { path, line, value } = self;
        match f(value) {
            Ok(value) => Ok(Located { path, line, value }),
            Err(rejected) => {
                let crate::flow::Rejected { event, error } = rejected.into();
                Err(crate::flow::Rejected::new(
                    Located {
                        path,
                        line,
                        value: event,
                    },
                    error,
                ))
            }
        }
    }
}

/// `{path, line, value}`.
impl<T: serde::Serialize> serde::Serialize for Located<T> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut record = serializer.serialize_struct("Located", 3)?;
        record.serialize_field("path", &self.path.display().to_string())?;
        record.serialize_field("line", &self.line)?;
        record.serialize_field("value", &self.value)?;
        record.end()
    }
}

impl<T> std::fmt::Display for Located<T> {
    /// The place: `path:line`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// The producers of a parsing source: one per reader of `file`; `wrap` makes each
/// record an event (as it is, or [`Located`]).
pub(crate) fn producers<P, W, O>(
    file: FileSource,
    path: &Path,
    parser: Arc<P>,
    policy: &ErrorPolicy<BadRecord>,
    operator: &'static str,
    wrap: W,
) -> Result<Vec<BoxedProducer<O>>>
where
    P: ChunkParser,
    W: Fn(&Arc<Path>, u64, P::Item) -> O + Clone + Send + 'static,
    O: Send + 'static,
{
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
                wrap: wrap.clone(),
            })
        })
        .collect())
}

struct Parsing<P: ChunkParser, W> {
    chunks: BoxedProducer<Chunk>,
    parser: Arc<P>,
    path: Arc<Path>,
    /// The byte offset after the last chunk, and the line number there.
    position: Option<(u64, u64)>,
    errors: ErrorHandler<BadRecord>,
    wrap: W,
}

impl<P, W, O> Parsing<P, W>
where
    P: ChunkParser,
    W: Fn(&Arc<Path>, u64, P::Item) -> O,
{
    fn parse(&mut self, chunks: Vec<Chunk>) -> std::result::Result<Vec<O>, StageError> {
        let mut out = Vec::new();
        for chunk in chunks {
            let line = match self.position {
                Some((offset, line)) if offset == chunk.offset() => line,
                Some((offset, line)) => line + count_lines(&self.path, offset, chunk.offset())?,
                None => 1 + count_lines(&self.path, 0, chunk.offset())?,
            };
            let bytes = chunk.bytes();
            let (errors, path, wrap) = (&mut self.errors, &self.path, &self.wrap);
            let mut emit = |line, record| out.push(wrap(path, line, record));
            self.parser
                .parse(bytes, line, &mut emit, &mut |line, text, reason| {
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

impl<P, W, O> Producer for Parsing<P, W>
where
    P: ChunkParser,
    W: Fn(&Arc<Path>, u64, P::Item) -> O + Send + 'static,
    O: Send + 'static,
{
    type Item = O;

    async fn handle_demand(
        &mut self,
        demand: usize,
    ) -> std::result::Result<Produced<O>, StageError> {
        let produced = match self.chunks.handle_demand(demand).await? {
            Produced::Events(chunks) => Produced::Events(self.parse(chunks)?),
            Produced::Finished(chunks) => Produced::Finished(self.parse(chunks)?),
        };
        // Dead letters the consumer could not take yet: wait for room before reading on.
        while let Some(wait) = self.errors.side_output() {
            wait.await?;
        }
        Ok(produced)
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
