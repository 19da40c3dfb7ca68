//! Reading on a thread that must notice when its flow is cancelled.
//!
//! A thread blocked in `read(2)` cannot see cancellation: over a pipe, socket or terminal
//! whose writer stays open and silent it would wait — holding its thread and the
//! descriptor — for good. So where the reader has a file descriptor, the thread first
//! `poll(2)`s it, for at most [`POLL_INTERVAL`] at a time, asks between polls whether the
//! flow still wants input, and reads only once there is something to read (data, the end,
//! or an error): a cancelled flow's reader ends within that interval. `poll` comes from
//! rustix, whose safe wrapper over the system call keeps this crate free of `unsafe`.
//!
//! A reader without a descriptor (any user `Read`) can only be abandoned: its thread is
//! marked as inside user code for each `read` (a [`Watch`]), so a flow cancelled then
//! counts it in [`lingering`](crate::lingering) until the `read` returns and the thread
//! ends.

use std::any::Any;
use std::io::{self, BufRead, Read, Stdin};
use std::sync::Arc;
use std::time::Duration;

use crate::lingering::Watch;

/// The longest a reader thread waits for input before checking whether its flow was
/// cancelled.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A file descriptor borrowed from a reader.
#[cfg(unix)]
pub(crate) type Descriptor<'a> = std::os::fd::BorrowedFd<'a>;
/// No descriptors to poll here: every reader is read as a plain `Read`.
#[cfg(not(unix))]
pub(crate) type Descriptor<'a> = (std::convert::Infallible, std::marker::PhantomData<&'a ()>);

/// How to find a reader's descriptor, if it has one that may be polled.
pub(crate) type DescriptorOf<R> = fn(&R) -> Option<Descriptor<'_>>;

/// The descriptor of the standard library's readers that have one and read straight from
/// it (plus [`Stdin`], read through its buffer, see [`Input::read`]).
pub(crate) fn std_descriptor<R: 'static>(reader: &R) -> Option<Descriptor<'_>> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        fn of<T: AsFd + 'static>(reader: &dyn Any) -> Option<Descriptor<'_>> {
            reader.downcast_ref::<T>().map(AsFd::as_fd)
        }
        let reader: &dyn Any = reader;
        of::<std::fs::File>(reader)
            .or_else(|| of::<Stdin>(reader))
            .or_else(|| of::<std::process::ChildStdout>(reader))
            .or_else(|| of::<std::process::ChildStderr>(reader))
            .or_else(|| of::<std::net::TcpStream>(reader))
            .or_else(|| of::<std::os::unix::net::UnixStream>(reader))
    }
    #[cfg(not(unix))]
    {
        let _ = reader;
        None
    }
}

/// The descriptor of a reader that reads straight from it.
#[cfg(unix)]
pub(crate) fn own_descriptor<R: std::os::fd::AsFd>(reader: &R) -> Option<Descriptor<'_>> {
    Some(reader.as_fd())
}

/// Whether `descriptor` has something to read (or an end, or an error), waiting at most
/// [`POLL_INTERVAL`].
#[cfg(unix)]
fn ready(descriptor: Descriptor<'_>) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: POLL_INTERVAL.subsec_nanos().into(),
    };
    let mut fds = [PollFd::new(&descriptor, PollFlags::IN)];
    match poll(&mut fds, Some(&timeout)) {
        Ok(ready) => Ok(ready > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(not(unix))]
fn ready(descriptor: Descriptor<'_>) -> io::Result<bool> {
    match descriptor.0 {}
}

/// A reader, read on a thread of its own for a flow that may be cancelled.
pub(crate) struct Input<R> {
    reader: R,
    descriptor: DescriptorOf<R>,
    watch: Arc<Watch>,
    /// `Stdin`'s own buffer holds bytes we left there: read them without polling.
    buffered: bool,
}

impl<R: Read + 'static> Input<R> {
    pub(crate) fn new(reader: R, descriptor: DescriptorOf<R>, watch: Arc<Watch>) -> Self {
        Input {
            reader,
            descriptor,
            watch,
            buffered: false,
        }
    }

    /// Appends up to `want` bytes to `block`, fewer only at the end of the input; returns
    /// how many, or `None` once `cancelled` says the flow no longer wants input.
    pub(crate) fn fill(
        &mut self,
        block: &mut Vec<u8>,
        want: usize,
        cancelled: &dyn Fn() -> bool,
    ) -> io::Result<Option<usize>> {
        let start = block.len();
        block.resize(start + want, 0);
        let mut filled = 0;
        while filled < want {
            match self.read(&mut block[start + filled..], cancelled)? {
                Some(0) => break,
                // A `read` claiming more than it was given is bounded, not trusted.
                Some(read) => filled += read.min(want - filled),
                None => return Ok(None),
            }
        }
        block.truncate(start + filled);
        Ok(Some(filled))
    }

    /// One read into `buf` (0: the end of the input), or `None` once `cancelled`.
    fn read(&mut self, buf: &mut [u8], cancelled: &dyn Fn() -> bool) -> io::Result<Option<usize>> {
        loop {
            if cancelled() {
                return Ok(None);
            }
            let pollable = match (self.descriptor)(&self.reader) {
                Some(descriptor) => Some(self.buffered || ready(descriptor)?),
                None => None,
            };
            let read = match pollable {
                Some(false) => continue,
                Some(true) => self.read_ready(buf),
                None => {
                    // A user's `read`: nothing can interrupt it, the flow can only leave it.
                    if !self.watch.enter() {
                        return Ok(None);
                    }
                    let read = self.reader.read(buf);
                    if !self.watch.leave() {
                        return Ok(None);
                    }
                    read
                }
            };
            match read {
                Ok(read) => return Ok(Some(read)),
                // A descriptor in non-blocking mode may have nothing after all.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads a reader whose descriptor has something to read: it does not block.
    fn read_ready(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let reader: &mut dyn Any = &mut self.reader;
        let Some(stdin) = reader.downcast_mut::<Stdin>() else {
            return self.reader.read(buf);
        };
        // `Stdin` reads through a buffer of its own, which polling cannot see: take from
        // that buffer at most one fill (one `read(2)`, which does not block now), and
        // remember whether bytes were left there.
        let mut stdin = stdin.lock();
        let available = stdin.fill_buf()?;
        let read = available.len().min(buf.len());
        buf[..read].copy_from_slice(&available[..read]);
        self.buffered = read < available.len();
        stdin.consume(read);
        Ok(read)
    }
}
