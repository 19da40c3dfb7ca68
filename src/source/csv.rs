//! CSV files as typed records (serde), parsed in parallel with line numbers.

use std::io::BufRead;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::parsed::{self, BadRecord, Bare, ChunkParser, Locate, Located};
use super::{BoxedProducer, FileSource, Source};
use crate::error::{FlowError, IoOperation, Result};
use crate::flow::ErrorPolicy;
use crate::stage::ErrorCounters;

/// A CSV file read by parallel readers, each row deserialized into a `T` with serde
/// (by header name when the file has a header line, the default; by position
/// otherwise). A row that does not parse is a [`FlowError::Record`] naming the file and
/// the line; what it does to the run is the source's [`ErrorPolicy`] (by default it ends
/// the run; [`on_error`](CsvSource::on_error) can skip it or send it, as a [`BadRecord`],
/// to a dead-letter sink).
///
/// Rows are split on line ends before they are parsed, so a quoted field must not
/// contain a line break (a row that has one is reported as malformed).
///
/// ```
/// use flowstage::flow::{ErrorPolicy, Flow};
/// use flowstage::source::CsvSource;
/// # let dir = std::env::temp_dir().join(format!("flowstage-doc-csv-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("orders.csv");
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// struct Order { id: u32, amount: f64 }
///
/// std::fs::write(&path, "id,amount\n1,9.5\n2,oops\n3,1.5\n")?;
/// let error = Flow::from_source(CsvSource::<Order>::new(&path)).collect::<Vec<_>>().unwrap_err();
/// assert!(error.to_string().contains("orders.csv:3: field `amount`"), "{error}");
///
/// let mut orders: Vec<Order> = Flow::from_source(CsvSource::new(&path).on_error(ErrorPolicy::skip())).collect()?;
/// orders.sort_by_key(|o| o.id);
/// assert_eq!(orders, [Order { id: 1, amount: 9.5 }, Order { id: 3, amount: 1.5 }]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct CsvSource<T, M = Bare> {
    path: PathBuf,
    file: FileSource,
    has_headers: bool,
    delimiter: u8,
    policy: ErrorPolicy<BadRecord>,
    _records: PhantomData<fn() -> (T, M)>,
}

impl<T> CsvSource<T> {
    /// The rows of `path`, comma-separated, with a header line, one reader per core.
    pub fn new(path: impl AsRef<Path>) -> Self {
        CsvSource {
            path: path.as_ref().to_path_buf(),
            file: FileSource::new(path.as_ref()),
            has_headers: true,
            delimiter: b',',
            policy: ErrorPolicy::fail(),
            _records: PhantomData,
        }
    }

    /// Each record with its file and line ([`Located`]), so that steps after the
    /// source can still say where a record came from (see [`Located`]'s example).
    pub fn located(self) -> CsvSource<T, Locate> {
        CsvSource {
            path: self.path,
            file: self.file,
            has_headers: self.has_headers,
            delimiter: self.delimiter,
            policy: self.policy,
            _records: PhantomData,
        }
    }
}

impl<T, M> CsvSource<T, M> {
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

    /// Whether the first line names the fields (default `true`); without it, fields are
    /// deserialized by position.
    pub fn has_headers(mut self, has_headers: bool) -> Self {
        self.has_headers = has_headers;
        self
    }

    /// The field delimiter (default `,`).
    pub fn delimiter(mut self, delimiter: u8) -> Self {
        self.delimiter = delimiter;
        self
    }

    /// What a row that does not parse does; see [`ErrorPolicy`].
    pub fn on_error(mut self, policy: ErrorPolicy<BadRecord>) -> Self {
        self.policy = policy;
        self
    }

    fn headers(&self) -> Result<Option<csv::ByteRecord>> {
        if !self.has_headers {
            return Ok(None);
        }
        let io = |source| FlowError::Io {
            operation: IoOperation::Read,
            path: Some(self.path.clone()),
            offset: Some(0),
            source,
        };
        super::file::regular_file(&self.path)?;
        let mut first = Vec::new();
        std::io::BufReader::new(std::fs::File::open(&self.path).map_err(io)?)
            .read_until(b'\n', &mut first)
            .map_err(io)?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .delimiter(self.delimiter)
            .from_reader(first.as_slice());
        let mut headers = csv::ByteRecord::new();
        reader
            .read_byte_record(&mut headers)
            .map_err(|e| FlowError::Record {
                path: self.path.clone(),
                line: 1,
                message: format!("bad header line: {e}"),
            })?;
        Ok(Some(headers))
    }
}

impl<T, M> CsvSource<T, M> {
    fn producers<R, W>(self, wrap: W) -> Result<Vec<BoxedProducer<R>>>
    where
        T: DeserializeOwned + Send + 'static,
        R: Send + 'static,
        W: Fn(&Arc<Path>, u64, T) -> R + Clone + Send + 'static,
    {
        let parser = Arc::new(CsvParser::<T> {
            headers: self.headers()?,
            delimiter: self.delimiter,
            _records: PhantomData,
        });
        parsed::producers(self.file, &self.path, parser, &self.policy, "csv", wrap)
    }
}

impl<T: DeserializeOwned + Send + 'static> Source for CsvSource<T> {
    type Item = T;

    fn into_producers(self) -> Result<Vec<BoxedProducer<T>>> {
        self.producers(|_: &Arc<Path>, _line, record: T| record)
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
        Some(("csv", self.policy.counters()))
    }

    fn add_error_stages(&self, pipeline: &mut crate::stage::Pipeline) -> Result<()> {
        self.policy.install(pipeline, "csv")
    }
}

/// [`CsvSource::located`]: each record with its file and line.
impl<T: DeserializeOwned + Send + 'static> Source for CsvSource<T, Locate> {
    type Item = Located<T>;

    fn into_producers(self) -> Result<Vec<BoxedProducer<Located<T>>>> {
        self.producers(|path: &Arc<Path>, line, value: T| Located {
            path: path.clone(),
            line,
            value,
        })
    }

    fn error_counters(&self) -> Option<(&'static str, Arc<ErrorCounters>)> {
        Some(("csv", self.policy.counters()))
    }

    fn add_error_stages(&self, pipeline: &mut crate::stage::Pipeline) -> Result<()> {
        self.policy.install(pipeline, "csv")
    }
}

struct CsvParser<T> {
    headers: Option<csv::ByteRecord>,
    delimiter: u8,
    _records: PhantomData<fn() -> T>,
}

impl<T> CsvParser<T> {
    fn reason(&self, error: &csv::Error) -> String {
        let csv::ErrorKind::Deserialize { err, .. } = error.kind() else {
            return error.to_string();
        };
        let name = err
            .field()
            .and_then(|i| self.headers.as_ref()?.get(i as usize))
            .map(|name| format!("field `{}`", String::from_utf8_lossy(name)));
        match (name, err.field()) {
            (Some(name), _) => format!("{name}: {}", err.kind()),
            (None, Some(i)) => format!("field {}: {}", i + 1, err.kind()),
            (None, None) => err.kind().to_string(),
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> ChunkParser for CsvParser<T> {
    type Item = T;

    fn parse(
        &self,
        bytes: &[u8],
        first_line: u64,
        emit: &mut impl FnMut(u64, T),
        bad: &mut dyn FnMut(u64, &[u8], String),
    ) {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(self.delimiter)
            .from_reader(bytes);
        let mut record = csv::ByteRecord::new();
        loop {
            match reader.read_byte_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {
                    let (line, start) = record
                        .position()
                        .map_or((1, 0), |p| (p.line(), p.byte() as usize));
                    let line = first_line + line - 1;
                    let end = (reader.position().byte() as usize).min(bytes.len());
                    let text = &bytes[start.min(end)..end];
                    if let Some(headers) = &self.headers {
                        if line == 1 {
                            continue; // the header line itself
                        }
                        if record.len() != headers.len() {
                            let reason = format!(
                                "expected {} fields, found {}",
                                headers.len(),
                                record.len()
                            );
                            bad(line, text, reason);
                            continue;
                        }
                    }
                    match record.deserialize::<T>(self.headers.as_ref()) {
                        Ok(value) => emit(line, value),
                        Err(error) => bad(line, text, self.reason(&error)),
                    }
                }
                Err(error) => {
                    // Reading from memory, only malformed input gets here; report it and
                    // stop this chunk rather than risk reading the same bytes again.
                    let line = error
                        .position()
                        .map_or(first_line, |p| first_line + p.line() - 1);
                    bad(line, &[], error.to_string());
                    break;
                }
            }
        }
    }
}
