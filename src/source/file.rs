//! Files read as parallel byte ranges aligned on a delimiter.
//!
//! A [`FileSource`] splits a file into one byte range per reader. Each range owns the
//! records (lines, or runs of non-whitespace) that *start* in it: a reader whose range
//! starts mid-record skips to the next delimiter, and every reader finishes the record it
//! is in when it reaches its range's end. So every record is read exactly once, and no
//! record is cut.
//!
//! Each reader streams its range in blocks (default 64 KiB) and emits one [`Chunk`] — whole
//! records, ending on a delimiter — per call, whatever the demand: memory per reader is a
//! block or two, never the file. With [`FileSource::mmap`] (`unsafe`: see there) the chunks
//! are slices of one shared mapping instead of copies.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::chunk::{Chunk, Delimiter};
use super::{BoxedProducer, Source};
use crate::error::{FlowError, IoOperation, Result, StageError};
use crate::stage::{Produced, Producer};

/// Default block size of a reader: small enough that the events one chunk turns into
/// (words, lines) stay in cache on their way through a partition exchange. On 500 MB of
/// prose, the literal word count ran in 2.05-2.11 s with 64 KiB chunks and 2.53-2.67 s
/// with 1 MiB. Flows that aggregate per chunk gain from larger ones.
pub const DEFAULT_BLOCK_SIZE: usize = 64 << 10;

/// What a file source has read, shared by its readers, to look at during or after a run.
///
/// ```
/// use flowstage::flow::Flow;
/// use flowstage::source::FileSource;
/// # let dir = std::env::temp_dir().join(format!("flowstage-doc-counters-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("words.txt");
/// std::fs::write(&path, "one two three\n")?;
/// let source = FileSource::new(&path).readers(1);
/// let counters = source.counters();
/// Flow::from_source(source).run()?;
/// assert_eq!(counters.bytes_read(), 14);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct FileCounters {
    bytes_read: AtomicU64,
}

impl FileCounters {
    /// Bytes the readers have taken from the file: returned by `read`, or, with
    /// [`FileSource::mmap`], the bytes of the mapping they looked at. Readers finish the
    /// record in progress at their range's end and look for the first record of their
    /// range, so with several readers a few blocks are counted twice. What a flow costs in
    /// I/O, whatever the file's size.
    pub fn bytes_read(&self) -> u64 {
        // A counter read alone: no other memory depends on its value.
        self.bytes_read.load(Relaxed)
    }
}

/// A file read in parallel byte ranges; emits [`Chunk`]s of whole records.
///
/// The path must name a regular file (a symlink to one will do): a pipe, socket or device
/// is a [`FlowError::Io`] when the run starts; read those with
/// [`ReaderSource`](super::ReaderSource).
///
/// ```
/// use flowstage::flow::Flow;
/// use flowstage::source::FileSource;
/// # let dir = std::env::temp_dir().join(format!("flowstage-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("words.txt");
/// std::fs::write(&path, "one two three\nfour five\n")?;
/// let words: usize = Flow::from_source(FileSource::new(&path).readers(2))
///     .map(|chunk| chunk.words().count())
///     .collect::<Vec<_>>()?
///     .into_iter()
///     .sum();
/// assert_eq!(words, 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    readers: usize,
    delimiter: Delimiter,
    block_size: usize,
    /// The promise of the caller of the `unsafe` [`FileSource::mmap`]: map the file.
    pub(super) mmap: Option<super::mmap::Unchanging>,
    counters: Arc<FileCounters>,
    /// The bar to draw while the flow reads (feature `progress`).
    #[cfg(feature = "progress")]
    progress: Option<indicatif::ProgressBar>,
}

impl FileSource {
    /// Reads `path` with one reader per core, whitespace-aligned, 64 KiB blocks.
    pub fn new(path: impl AsRef<Path>) -> Self {
        FileSource {
            path: path.as_ref().to_path_buf(),
            readers: crate::runtime::default_parallelism(),
            delimiter: Delimiter::Whitespace,
            block_size: DEFAULT_BLOCK_SIZE,
            mmap: None,
            counters: Arc::default(),
            #[cfg(feature = "progress")]
            progress: None,
        }
    }

    /// Shows a progress bar on standard error while the flow reads the file (when
    /// standard error is a terminal): bytes read of the file's length, rate, time left,
    /// from the readers' byte counter. Feature `progress`.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use flowstage::source::FileSource;
    /// # let path = std::env::temp_dir().join(format!("flowstage-doc-progress-{}.txt", std::process::id()));
    /// # std::fs::write(&path, "a few words\n")?;
    /// let chunks: Vec<_> = Flow::from_source(FileSource::new(&path).progress()).collect()?;
    /// # assert!(!chunks.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "progress")]
    pub fn progress(self) -> Self {
        self.progress_with(super::progress::default_bar())
    }

    /// [`progress`](FileSource::progress) with a bar of the caller's (its style, its
    /// `MultiProgress`); the source sets its length and position, and finishes it when
    /// the readers are done.
    #[cfg(feature = "progress")]
    pub fn progress_with(mut self, bar: indicatif::ProgressBar) -> Self {
        self.progress = Some(bar);
        self
    }

    /// What the source's readers read, counted as they go ([`FileCounters`]).
    pub fn counters(&self) -> Arc<FileCounters> {
        self.counters.clone()
    }

    /// The number of parallel readers (byte ranges); at least 1 (0 is a
    /// [`FlowError::Config`] when the flow runs).
    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = readers;
        self
    }

    /// What records end on: lines, or any ASCII whitespace (the default, for words).
    pub fn delimiter(mut self, delimiter: Delimiter) -> Self {
        self.delimiter = delimiter;
        self
    }

    /// Bytes read per block; at least 1 (0 is a [`FlowError::Config`] when the flow
    /// runs).
    pub fn block_size(mut self, block_size: usize) -> Self {
        self.block_size = block_size;
        self
    }
}

fn io_error(
    operation: IoOperation,
    path: &Path,
    offset: Option<u64>,
    source: std::io::Error,
) -> FlowError {
    FlowError::Io {
        operation,
        path: Some(path.to_path_buf()),
        offset,
        source,
    }
}

/// Checks that `path` is a regular file, before opening it: a file source reads byte
/// ranges of a file of known length. A pipe, socket or device reports a length of 0 (the
/// source would end at once with nothing read), and opening a FIFO blocks until a writer
/// comes: both are a typed error instead.
pub(crate) fn regular_file(path: &Path) -> Result<()> {
    let metadata =
        std::fs::metadata(path).map_err(|e| io_error(IoOperation::Open, path, None, e))?;
    if metadata.is_dir() {
        return Err(io_error(
            IoOperation::Open,
            path,
            None,
            std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
        ));
    }
    if !metadata.is_file() {
        return Err(io_error(
            IoOperation::Open,
            path,
            None,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file (a pipe, socket or device has no length to split into \
                 byte ranges): read it with ReaderSource",
            ),
        ));
    }
    Ok(())
}

impl Source for FileSource {
    type Item = Chunk;

    /// Byte range `i` goes to worker `i % W`: give the source at least as many
    /// [`readers`](FileSource::readers) as the cluster has workers.
    #[cfg(feature = "timely")]
    fn into_worker_producers(
        self,
        worker: usize,
        workers: usize,
    ) -> Result<Vec<Option<BoxedProducer<Chunk>>>> {
        Ok(super::share(self.into_producers()?, worker, workers))
    }

    fn into_producers(self) -> Result<Vec<BoxedProducer<Chunk>>> {
        if self.readers == 0 {
            return Err(FlowError::Config(format!(
                "{}: a file source needs at least 1 reader",
                self.path.display()
            )));
        }
        if self.block_size == 0 {
            return Err(FlowError::Config(format!(
                "{}: a file source's block size must be at least 1 byte",
                self.path.display()
            )));
        }
        let path: Arc<Path> = Arc::from(self.path.as_path());
        regular_file(&path)?;
        let file = File::open(&path).map_err(|e| io_error(IoOperation::Open, &path, None, e))?;
        let metadata = file
            .metadata()
            .map_err(|e| io_error(IoOperation::Open, &path, None, e))?;
        let len = metadata.len();
        let readers = (self.readers as u64).min(len.max(1));
        let map = match self.mmap {
            Some(promise) if len > 0 => {
                let map = super::mmap::map(&file, promise)
                    .map_err(|e| io_error(IoOperation::Open, &path, None, e))?;
                Some(Arc::new(map))
            }
            _ => None,
        };
        #[cfg(feature = "progress")]
        let ticker = self
            .progress
            .clone()
            .map(|bar| super::progress::Ticker::start(bar, len, self.counters.clone()));
        let producers = (0..readers)
            .map(|i| {
                let start = len * i / readers;
                let end = len * (i + 1) / readers;
                let reader = RangeReader {
                    path: path.clone(),
                    file: None,
                    map: map.clone(),
                    start,
                    end,
                    position: start,
                    aligned: start == 0,
                    carry: Vec::new(),
                    delimiter: self.delimiter,
                    block_size: self.block_size,
                    finished: start >= end,
                    counters: self.counters.clone(),
                    len,
                    #[cfg(feature = "progress")]
                    _progress: ticker.clone(),
                };
                BoxedProducer::new(reader)
            })
            .collect();
        Ok(producers)
    }
}

/// Reads the records that start in `start..end`.
struct RangeReader {
    path: Arc<Path>,
    file: Option<File>,
    map: Option<Arc<memmap2::Mmap>>,
    start: u64,
    end: u64,
    /// The next byte to read.
    position: u64,
    /// Whether `position` is at a record boundary (the first record has been found).
    aligned: bool,
    /// Bytes read after the last delimiter: the start of an unfinished record.
    carry: Vec<u8>,
    delimiter: Delimiter,
    block_size: usize,
    finished: bool,
    counters: Arc<FileCounters>,
    /// The file's length when the flow started: an end of file before it means the file
    /// shrank while being read, and records were lost.
    len: u64,
    /// The progress bar, finished when the last reader is gone.
    #[cfg(feature = "progress")]
    _progress: Option<Arc<super::progress::Ticker>>,
}

impl RangeReader {
    fn error(&self, operation: IoOperation, offset: u64, source: std::io::Error) -> StageError {
        Box::new(io_error(operation, &self.path, Some(offset), source))
    }

    fn read_block(&mut self, at: u64, size: usize) -> std::result::Result<Vec<u8>, StageError> {
        if self.file.is_none() {
            let mut file =
                File::open(&self.path).map_err(|e| self.error(IoOperation::Open, at, e))?;
            file.seek(SeekFrom::Start(at))
                .map_err(|e| self.error(IoOperation::Read, at, e))?;
            self.file = Some(file);
        }
        let mut block = Vec::with_capacity(size);
        let taken = match self.file.as_mut() {
            Some(file) => file.take(size as u64).read_to_end(&mut block),
            None => Ok(0),
        };
        taken.map_err(|e| self.error(IoOperation::Read, at, e))?;
        // Only a total: no other memory is published through this counter.
        self.counters
            .bytes_read
            .fetch_add(block.len() as u64, Relaxed);
        let wanted = (size as u64).min(self.len.saturating_sub(at));
        if (block.len() as u64) < wanted {
            // Stopping quietly here would lose every record after `at`.
            let end = at + block.len() as u64;
            return Err(self.error(
                IoOperation::Read,
                end,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "the file ended at byte {end}, but it had {} bytes when the flow \
                         started: it shrank while being read",
                        self.len
                    ),
                ),
            ));
        }
        Ok(block)
    }

    /// Bytes `at..at + size` (fewer at the end of the file).
    fn bytes(&mut self, at: u64, size: usize) -> std::result::Result<Slice, StageError> {
        match &self.map {
            Some(map) => {
                let from = (at as usize).min(map.len());
                let to = from.saturating_add(size).min(map.len());
                self.counters
                    .bytes_read
                    .fetch_add((to - from) as u64, Relaxed);
                Ok(Slice::Mapped(from, to))
            }
            None => self.read_block(at, size).map(Slice::Owned),
        }
    }

    fn view<'a>(&'a self, slice: &'a Slice) -> &'a [u8] {
        match (slice, &self.map) {
            (Slice::Owned(bytes), _) => bytes,
            (Slice::Mapped(from, to), Some(map)) => &map[*from..*to],
            (Slice::Mapped(..), None) => &[],
        }
    }

    /// Skips the tail of a record that started in the previous range.
    fn align(&mut self) -> std::result::Result<(), StageError> {
        // A record starts at `start` only if the byte before it is a delimiter.
        let before = self.bytes(self.start - 1, 1)?;
        let before_is_delimiter = self
            .view(&before)
            .first()
            .is_some_and(|&b| self.delimiter.is(b));
        self.position = self.start;
        if before_is_delimiter {
            self.aligned = true;
            return Ok(());
        }
        loop {
            if self.position >= self.end {
                // The record that crosses our whole range belongs to an earlier reader.
                self.finished = true;
                return Ok(());
            }
            let slice = self.bytes(self.position, self.block_size)?;
            let bytes = self.view(&slice);
            if bytes.is_empty() {
                self.finished = true;
                return Ok(());
            }
            let read = bytes.len() as u64;
            if let Some(index) = self.delimiter.find(bytes) {
                self.position += index as u64 + 1;
                self.aligned = true;
                // A record starting at `end` or later belongs to the next range.
                self.finished = self.position >= self.end;
                // The stream position moved past the block: re-seek on the next read.
                self.file = None;
                return Ok(());
            }
            self.position += read;
        }
    }

    /// The next chunk of whole records, or `None` at the end of the range.
    fn next_chunk(&mut self) -> std::result::Result<Option<Chunk>, StageError> {
        if self.finished {
            return Ok(None);
        }
        if !self.aligned {
            self.align()?;
            if self.finished {
                return Ok(None);
            }
            self.file = None;
        }
        loop {
            let at = self.position;
            let slice = self.bytes(at, self.block_size)?;
            let block = self.view(&slice);
            let read = block.len();
            if read == 0 {
                // End of file: the unfinished record is the last one.
                self.finished = true;
                let offset = at - self.carry.len() as u64;
                let rest = std::mem::take(&mut self.carry);
                return Ok(
                    (!rest.is_empty()).then(|| Chunk::owned(rest, offset, self.path.clone()))
                );
            }
            // Records starting at or past `end` belong to the next range: we only need to
            // finish the one we are in, so search only up to the first delimiter there.
            let cut = match self.delimiter.rfind(block) {
                Some(last) => last + 1,
                None => 0,
            };
            let record_start = at - self.carry.len() as u64;
            if cut == 0 {
                // No delimiter in this block: the record goes on.
                let owned = self.view(&slice).to_vec();
                self.carry.extend_from_slice(&owned);
                self.position += read as u64;
                continue;
            }
            // Where does our range stop inside this block? At the first delimiter at or
            // after `end - 1`, so the record in progress at `end` is finished here.
            let stop = if at + read as u64 >= self.end {
                let from = self.end.saturating_sub(1).saturating_sub(at) as usize;
                self.delimiter
                    .find(&block[from.min(read)..])
                    .map(|index| from + index + 1)
            } else {
                None
            };
            let take = stop.unwrap_or(cut);
            self.position = at + take as u64;
            if stop.is_some() {
                self.finished = true;
            }
            let chunk = match (&slice, &self.map) {
                (Slice::Mapped(from, _), Some(map)) if self.carry.is_empty() => Chunk::mapped(
                    map.clone(),
                    *from..*from + take,
                    record_start,
                    self.path.clone(),
                ),
                _ => {
                    let mut bytes = std::mem::take(&mut self.carry);
                    bytes.extend_from_slice(&self.view(&slice)[..take]);
                    Chunk::owned(bytes, record_start, self.path.clone())
                }
            };
            if !self.finished {
                let rest = self.view(&slice)[take..].to_vec();
                self.position += rest.len() as u64;
                self.carry = rest;
            }
            return Ok(Some(chunk));
        }
    }
}

/// A block: read into memory, or a range of the mapping.
enum Slice {
    Owned(Vec<u8>),
    Mapped(usize, usize),
}

impl Producer for RangeReader {
    type Item = Chunk;

    async fn handle_demand(
        &mut self,
        _demand: usize,
    ) -> std::result::Result<Produced<Chunk>, StageError> {
        // One chunk per call, whatever the demand: a chunk holds many records, and memory
        // must stay at a block or two per reader.
        match self.next_chunk()? {
            Some(chunk) if !self.finished => Ok(Produced::Events(vec![chunk])),
            Some(chunk) => Ok(Produced::Finished(vec![chunk])),
            None => Ok(Produced::Finished(Vec::new())),
        }
    }
}
