//! Lines of a file as `String`s, read in parallel byte ranges.

use super::chunk::{Chunk, Delimiter};
use super::file::FileSource;
use super::{BoxedProducer, Source};
use crate::error::{Result, StageError};
use crate::stage::{Produced, Producer};

/// The lines of a file as text (without `\n` or `\r\n`), read by parallel readers.
/// Invalid UTF-8 ends the run with [`FlowError::InvalidUtf8`](crate::FlowError) naming
/// the file and byte offset — the [`root_cause`](crate::FlowError::root_cause) of the
/// `StageFailed` naming the reader's stage — unless [`lossy`](LinesSource::lossy)
/// replaces it with U+FFFD.
///
/// ```
/// use flowstage::flow::Flow;
/// use flowstage::source::LinesSource;
/// # let dir = std::env::temp_dir().join(format!("flowstage-doc-lines-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("lines.txt");
/// std::fs::write(&path, "alpha\r\nbeta\ngamma")?;
/// let mut lines: Vec<String> = Flow::from_source(LinesSource::new(&path)).collect()?;
/// lines.sort();
/// assert_eq!(lines, ["alpha", "beta", "gamma"]);
///
/// std::fs::write(&path, b"ok\nbad \xff\n")?;
/// let error = Flow::from_source(LinesSource::new(&path)).collect::<Vec<String>>().unwrap_err();
/// assert!(matches!(error.root_cause(), flowstage::FlowError::InvalidUtf8 { offset: 7, .. }));
/// assert!(error.to_string().contains("invalid UTF-8 at byte 7"), "{error}");
/// let lossy: Vec<String> = Flow::from_source(LinesSource::new(&path).lossy(true)).collect()?;
/// assert!(lossy.contains(&"bad \u{fffd}".to_string()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct LinesSource {
    file: FileSource,
    lossy: bool,
}

impl LinesSource {
    /// The lines of `path`, one reader per core.
    pub fn new(path: impl AsRef<std::path::Path>) -> Self {
        LinesSource {
            file: FileSource::new(path).delimiter(Delimiter::Line),
            lossy: false,
        }
    }

    /// The number of parallel readers.
    pub fn readers(mut self, readers: usize) -> Self {
        self.file = self.file.readers(readers);
        self
    }

    /// Bytes per block each reader reads at a time (at least 1); see [`FileSource`].
    pub fn block_size(mut self, block_size: usize) -> Self {
        self.file = self.file.block_size(block_size);
        self
    }

    /// What the readers read, counted as they go.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use flowstage::source::LinesSource;
    /// # let dir = std::env::temp_dir().join(format!("flowstage-doc-lines-counters-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let path = dir.join("lines.txt");
    /// std::fs::write(&path, "alpha\nbeta\n")?;
    /// // One reader: with several, each also reads a little past its range's end.
    /// let source = LinesSource::new(&path).readers(1);
    /// let counters = source.counters();
    /// let lines: Vec<String> = Flow::from_source(source).collect()?;
    /// assert_eq!((lines.len(), counters.bytes_read()), (2, 11));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn counters(&self) -> std::sync::Arc<super::FileCounters> {
        self.file.counters()
    }

    /// Replace invalid UTF-8 with U+FFFD instead of failing.
    pub fn lossy(mut self, lossy: bool) -> Self {
        self.lossy = lossy;
        self
    }
}

impl Source for LinesSource {
    type Item = String;

    /// Byte range `i` goes to worker `i % W`: give the source at least as many
    /// [`readers`](FileSource::readers) as the cluster has workers.
    #[cfg(feature = "timely")]
    fn into_worker_producers(
        self,
        worker: usize,
        workers: usize,
    ) -> Result<Vec<Option<BoxedProducer<String>>>> {
        Ok(super::share(self.into_producers()?, worker, workers))
    }

    fn into_producers(self) -> Result<Vec<BoxedProducer<String>>> {
        let lossy = self.lossy;
        Ok(self
            .file
            .into_producers()?
            .into_iter()
            .map(|chunks| BoxedProducer::new(Lines { chunks, lossy }))
            .collect())
    }
}

struct Lines {
    chunks: BoxedProducer<Chunk>,
    lossy: bool,
}

impl Lines {
    fn decode(&self, chunks: Vec<Chunk>) -> std::result::Result<Vec<String>, StageError> {
        let mut lines = Vec::new();
        for chunk in &chunks {
            if self.lossy {
                lines.extend(chunk.text_lines_lossy().map(|line| line.into_owned()));
            } else {
                for line in chunk.text_lines() {
                    // Boxed straight into a `StageError`: `Box::new` then `?` would box the
                    // box, and the run's error would no longer downcast to `FlowError`.
                    let line = line.map_err(|error| -> StageError { Box::new(error) })?;
                    lines.push(line.to_owned());
                }
            }
        }
        Ok(lines)
    }
}

impl Producer for Lines {
    type Item = String;

    async fn handle_demand(
        &mut self,
        demand: usize,
    ) -> std::result::Result<Produced<String>, StageError> {
        Ok(match self.chunks.handle_demand(demand).await? {
            Produced::Events(chunks) => Produced::Events(self.decode(chunks)?),
            Produced::Finished(chunks) => Produced::Finished(self.decode(chunks)?),
        })
    }
}
