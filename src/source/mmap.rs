//! Mapping a file: the one place of the crate that calls into `unsafe` memory mapping.
//!
//! A mapping is only sound while the file keeps its length: a page past a shrunken file's
//! end raises `SIGBUS`, which kills the process before any error can be returned. No safe
//! call of the crate may risk that, so mapping is an opt-in the caller makes with
//! `unsafe` ([`FileSource::mmap`]), taking on that contract. Its promise travels as an
//! [`Unchanging`] token, which only that function makes and without which [`map`] cannot
//! be called: the invariant is in the types, not in a flag a later change could set.

#![allow(unsafe_code)]

use std::fs::File;

use super::FileSource;

/// The promise of the caller of [`FileSource::mmap`] that the file does not change while
/// the flow reads it. Made only in this module.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unchanging(());

impl FileSource {
    /// Maps the file instead of reading it: chunks are slices of one shared mapping, no
    /// copies. `mmap(false)` goes back to reading.
    ///
    /// # Safety
    ///
    /// The file must not be truncated, and should not be written, by this process or any
    /// other, while the flow runs and while any of its chunks is alive. Reading a page of a
    /// mapping past the end of a file that shrank raises `SIGBUS` and kills the process —
    /// there is no error to return — where a read file fails the run with a typed
    /// [`FlowError::Io`](crate::FlowError::Io) instead. Map only files nothing else changes
    /// (an archive, a snapshot); read the others (the default).
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use flowstage::source::FileSource;
    /// # let dir = std::env::temp_dir().join(format!("flowstage-doc-mmap-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let path = dir.join("words.txt");
    /// std::fs::write(&path, "one two three\n")?;
    /// // SAFETY: the file is ours and nothing changes it while the flow runs.
    /// let source = unsafe { FileSource::new(&path).mmap(true) };
    /// let words: usize = Flow::from_source(source)
    ///     .map(|chunk| chunk.words().count())
    ///     .collect::<Vec<_>>()?
    ///     .into_iter()
    ///     .sum();
    /// assert_eq!(words, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Without `unsafe` it does not compile:
    ///
    /// ```compile_fail,E0133
    /// let source = flowstage::source::FileSource::new("words.txt").mmap(true);
    /// ```
    pub unsafe fn mmap(mut self, mmap: bool) -> Self {
        self.mmap = mmap.then_some(Unchanging(()));
        self
    }
}

/// Maps `file` read-only, as promised by `promise`.
pub(super) fn map(file: &File, promise: Unchanging) -> std::io::Result<memmap2::Mmap> {
    let _ = promise;
    // SAFETY: the mapping is read-only, and `promise` exists only because the caller of
    // the `unsafe` `FileSource::mmap` promised that the file keeps its length (and
    // contents) while the mapping lives. A system call Miri cannot run, with nothing of
    // ours inside it to check.
    unsafe { memmap2::Mmap::map(file) }
}
