//! A JSON-lines file as a sink: one JSON value per event, one per line.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{FlowError, IoOperation, Result, StageError};
use crate::stage::{Consumer, ConsumerContext};

/// Writes each event as one line of JSON, for
/// [`Flow::run_into`](crate::flow::Flow::run_into). Writes are buffered; the file is
/// flushed when the flow ends. An error names the file and the line.
///
/// ```
/// use flowstage::flow::Flow;
/// use flowstage::sink::JsonLinesSink;
/// # let dir = std::env::temp_dir().join(format!("flowstage-doc-json-sink-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("out.jsonl");
/// Flow::from_iter([(1, "a"), (2, "b")]).run_into(JsonLinesSink::create(&path)?)?;
/// assert_eq!(std::fs::read_to_string(&path)?, "[1,\"a\"]\n[2,\"b\"]\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct JsonLinesSink<T> {
    path: PathBuf,
    writer: BufWriter<File>,
    lines: u64,
    _events: PhantomData<fn(T)>,
}

impl<T> JsonLinesSink<T> {
    /// Creates (or truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::create(&path)
            .map_err(|source| FlowError::io(IoOperation::Create, &path, source))?;
        Ok(JsonLinesSink {
            writer: BufWriter::new(file),
            path,
            lines: 0,
            _events: PhantomData,
        })
    }

    fn io(&self, source: std::io::Error) -> StageError {
        Box::new(FlowError::io(IoOperation::Write, &self.path, source))
    }
}

impl<T: Serialize + Send + 'static> Consumer for JsonLinesSink<T> {
    type Item = T;

    async fn handle_events(
        &mut self,
        events: Vec<T>,
        _context: &mut ConsumerContext,
    ) -> std::result::Result<(), StageError> {
        for event in &events {
            if let Err(error) = serde_json::to_writer(&mut self.writer, event) {
                return Err(match error.io_error_kind() {
                    Some(kind) => self.io(std::io::Error::new(kind, error)),
                    None => Box::new(FlowError::Record {
                        path: self.path.clone(),
                        line: self.lines + 1,
                        message: format!("cannot write: {error}"),
                    }),
                });
            }
            self.writer.write_all(b"\n").map_err(|e| self.io(e))?;
            self.lines += 1;
        }
        Ok(())
    }

    async fn handle_done(&mut self) -> std::result::Result<(), StageError> {
        self.writer.flush().map_err(|e| self.io(e))
    }
}
