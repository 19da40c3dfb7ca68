//! JSON-lines files as typed records (serde), parsed in parallel with line numbers.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::parsed::{self, BadRecord, Bare, ChunkParser, Locate, Located, trim_line_end};
use super::{BoxedProducer, FileSource, Source};
use crate::error::Result;
use crate::flow::ErrorPolicy;
use crate::stage::ErrorCounters;

/// A JSON-lines file (one JSON value per line; blank lines are skipped) read by parallel
/// readers, each line deserialized into a `T` with serde. A line that does not parse is
/// a [`FlowError::Record`](crate::FlowError::Record) naming the file and the line; what
/// it does to the run is the source's [`ErrorPolicy`] (by default it ends the run).
///
/// ```
/// use flowstage::flow::{ErrorPolicy, Flow};
/// use flowstage::source::JsonLinesSource;
/// use std::sync::{Arc, Mutex};
/// # let dir = std::env::temp_dir().join(format!("flowstage-doc-jsonl-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("events.jsonl");
/// #[derive(serde::Deserialize)]
/// struct Event { user: String }
///
/// std::fs::write(&path, "{\"user\":\"ann\"}\n\n{\"user\":\n{\"user\":\"bob\"}\n")?;
/// let bad = Arc::new(Mutex::new(Vec::new()));
/// let into = bad.clone();
/// let policy = ErrorPolicy::dead_letter_fn(move |letters: Vec<flowstage::flow::DeadLetter<flowstage::source::BadRecord>>| {
///     into.lock().unwrap().extend(letters.into_iter().map(|l| (l.event.line, l.event.text)));
///     Ok(())
/// });
/// let users: Vec<Event> = Flow::from_source(JsonLinesSource::new(&path).on_error(policy)).collect()?;
/// assert_eq!(users.len(), 2);
/// assert_eq!(*bad.lock().unwrap(), [(3, "{\"user\":".to_string())]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct JsonLinesSource<T, M = Bare> {
    path: PathBuf,
    file: FileSource,
    policy: ErrorPolicy<BadRecord>,
    _records: PhantomData<fn() -> (T, M)>,
}

impl<T> JsonLinesSource<T> {
    /// The lines of `path`, one reader per core.
    pub fn new(path: impl AsRef<Path>) -> Self {
        JsonLinesSource {
            path: path.as_ref().to_path_buf(),
            file: FileSource::new(path.as_ref()),
            policy: ErrorPolicy::fail(),
            _records: PhantomData,
        }
    }

    /// Each record with its file and line ([`Located`]), so that steps after the
    /// source can still say where a record came from.
    pub fn located(self) -> JsonLinesSource<T, Locate> {
        JsonLinesSource {
            path: self.path,
            file: self.file,
            policy: self.policy,
            _records: PhantomData,
        }
    }
}

impl<T, M> JsonLinesSource<T, M> {
    /// Shows a progress bar while the flow reads the file; see
    /// [`FileSource::progress`](super::FileSource::progress). Feature `progress`.
    #[cfg(feature = "progress")]
    pub fn progress(mut self) -> Self {
        self.file = self.file.progress();
        self
    }

    /// The number of parallel readers.
    pub fn readers(mut self, readers: usize) -> Self {
        self.file = self.file.readers(readers);
        self
    }

    /// Bytes each reader reads at a time (default
    /// [`DEFAULT_BLOCK_SIZE`](super::DEFAULT_BLOCK_SIZE)); a block's whole lines are
    /// parsed as one batch.
    pub fn block_size(mut self, block_size: usize) -> Self {
        self.file = self.file.block_size(block_size);
        self
    }

    /// What a line that does not parse does; see [`ErrorPolicy`].
    pub fn on_error(mut self, policy: ErrorPolicy<BadRecord>) -> Self {
        self.policy = policy;
        self
    }
}

impl<T: DeserializeOwned + Send + 'static> Source for JsonLinesSource<T> {
    type Item = T;

    fn into_producers(self) -> Result<Vec<BoxedProducer<T>>> {
        let parser = Arc::new(JsonParser::<T>(PhantomData));
        let wrap = |_: &Arc<Path>, _line, record: T| record;
        parsed::producers(self.file, &self.path, parser, &self.policy, "json", wrap)
    }

    /// Byte range `i` goes to worker `i % W`: give the source at least as many
    /// [`readers`](Self::readers) as the cluster has workers.
    #[cfg(feature = "timely")]
    fn into_worker_producers(
        self,
        worker: usize,
        workers: usize,
    ) -> Result<Vec<Option<BoxedProducer<T>>>> {
        Ok(super::share(self.into_producers()?, worker, workers))
    }

    fn error_counters(&self) -> Option<(&'static str, Arc<ErrorCounters>)> {
        Some(("json", self.policy.counters()))
    }

    fn add_error_stages(&self, pipeline: &mut crate::stage::Pipeline) -> Result<()> {
        self.policy.install(pipeline, "json")
    }
}

/// [`JsonLinesSource::located`]: each record with its file and line.
impl<T: DeserializeOwned + Send + 'static> Source for JsonLinesSource<T, Locate> {
    type Item = Located<T>;

    fn into_producers(self) -> Result<Vec<BoxedProducer<Located<T>>>> {
        let parser = Arc::new(JsonParser::<T>(PhantomData));
        let wrap = |path: &Arc<Path>, line, value: T| Located {
            path: path.clone(),
            line,
            value,
        };
        parsed::producers(self.file, &self.path, parser, &self.policy, "json", wrap)
    }

    fn error_counters(&self) -> Option<(&'static str, Arc<ErrorCounters>)> {
        Some(("json", self.policy.counters()))
    }

    fn add_error_stages(&self, pipeline: &mut crate::stage::Pipeline) -> Result<()> {
        self.policy.install(pipeline, "json")
    }
}

struct JsonParser<T>(PhantomData<fn() -> T>);

impl<T: DeserializeOwned + Send + 'static> ChunkParser for JsonParser<T> {
    type Item = T;

    fn parse(
        &self,
        bytes: &[u8],
        first_line: u64,
        emit: &mut impl FnMut(u64, T),
        bad: &mut dyn FnMut(u64, &[u8], String),
    ) {
        let mut line = first_line;
        let mut rest = bytes;
        while !rest.is_empty() {
            let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let text = trim_line_end(&rest[..end]);
            if !text.iter().all(u8::is_ascii_whitespace) {
                match serde_json::from_slice::<T>(text) {
                    Ok(value) => emit(line, value),
                    Err(error) => bad(line, text, error.to_string()),
                }
            }
            rest = &rest[end..];
            line += 1;
        }
    }
}
