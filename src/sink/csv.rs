//! A CSV file as a sink: one row per event, serialized with serde.

use std::fs::File;
use std::io::BufWriter;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{FlowError, IoOperation, Result, StageError};
use crate::stage::{Consumer, ConsumerContext};

/// Writes each event as a CSV row (a header line from the first event's field names when
/// it is a struct), for [`Flow::run_into`](crate::flow::Flow::run_into). Writes are
/// buffered; the file is flushed when the flow ends. An error names the file and the
/// line.
///
/// ```
/// use flowstage::flow::Flow;
/// use flowstage::sink::CsvSink;
/// # let dir = std::env::temp_dir().join(format!("flowstage-doc-csv-sink-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("totals.csv");
/// #[derive(serde::Serialize)]
/// struct Total { customer: u32, revenue: f64 }
///
/// Flow::from_iter([Total { customer: 7, revenue: 1.5 }]).run_into(CsvSink::create(&path)?)?;
/// assert_eq!(std::fs::read_to_string(&path)?, "customer,revenue\n7,1.5\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct CsvSink<T> {
    path: PathBuf,
    writer: csv::Writer<BufWriter<File>>,
    lines: u64,
    _events: PhantomData<fn(T)>,
}

impl<T> CsvSink<T> {
    /// Creates (or truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::create(&path)
            .map_err(|source| FlowError::io(IoOperation::Create, &path, source))?;
        Ok(CsvSink {
            writer: csv::Writer::from_writer(BufWriter::new(file)),
            path,
            lines: 0,
            _events: PhantomData,
        })
    }

    fn error(&self, error: csv::Error) -> StageError {
        let message = error.to_string();
        let error = match error.into_kind() {
            csv::ErrorKind::Io(source) => FlowError::io(IoOperation::Write, &self.path, source),
            _ => FlowError::Record {
                path: self.path.clone(),
                line: self.lines + 1,
                message: format!("cannot write: {message}"),
            },
        };
        Box::new(error)
    }
}

impl<T: Serialize + Send + 'static> Consumer for CsvSink<T> {
    type Item = T;

    async fn handle_events(
        &mut self,
        events: Vec<T>,
        _context: &mut ConsumerContext,
    ) -> std::result::Result<(), StageError> {
        for event in &events {
            self.writer.serialize(event).map_err(|e| self.error(e))?;
            self.lines += 1;
        }
        Ok(())
    }

    async fn handle_done(&mut self) -> std::result::Result<(), StageError> {
        self.writer.flush().map_err(|source| -> StageError {
            Box::new(FlowError::io(IoOperation::Write, &self.path, source))
        })
    }
}
