//! Bad input: invalid options are a typed [`FlowError::Config`] when the flow runs, never
//! a panic or a silent clamp; bad files (missing, unreadable, a directory, invalid UTF-8,
//! shrinking while read) end the run with a typed error naming the file and, where there
//! is one, the byte offset; and the delimiter-aligned chunker never loses, splits or
//! duplicates a record, whatever the bytes and the number of ranges.
//!
//! Complements `tests/flow.rs` (0 stages, invalid demand, empty source lists; a second
//! reduce in a layer does not build), `tests/windows.rs` (count 0, fixed 0, lateness on a
//! count window, triggers on sessions), `tests/stages.rs` (subscription options) and
//! `tests/file_source.rs` (missing file, directory, in-order reading over a small
//! alphabet).

mod common;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::guarded;
use flowstage::flow::{Flow, Partition};
use flowstage::source::{
    Chunk, Delimiter, FileSource, LinesSource, ReaderSource, is_word_separator,
};
use flowstage::window::Window;
use flowstage::{FlowError, IoOperation};
use proptest::prelude::*;

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowstage-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = temp_dir().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn assert_config<T: std::fmt::Debug>(result: flowstage::Result<T>, what: &str) {
    match result {
        Err(FlowError::Config(message)) => assert!(!message.is_empty(), "{what}"),
        other => panic!("{what}: expected FlowError::Config, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

fn windowed(window: Window<u64>) -> flowstage::Result<Vec<u64>> {
    guarded(move || {
        Flow::from_iter(1..=10u64)
            .partition(Partition::new().stages(1).window(window))
            .reduce(|| 0u64, |x, sum| sum + x)
            .emit_state()
            .collect()
    })
}

#[test]
fn invalid_windows_and_triggers_are_config_errors() {
    let ts = |x: &u64| *x as i64;
    let ms = Duration::from_millis;
    let cases: Vec<(&str, Window<u64>)> = vec![
        (
            "fixed below 1 ms",
            Window::fixed(Duration::from_micros(500), ts),
        ),
        ("sliding size 0", Window::sliding(Duration::ZERO, ms(1), ts)),
        (
            "sliding slide 0",
            Window::sliding(ms(10), Duration::ZERO, ts),
        ),
        ("sliding slide > size", Window::sliding(ms(10), ms(11), ts)),
        ("session gap 0", Window::session(Duration::ZERO, ts)),
        ("periodic 0", Window::periodic(Duration::ZERO)),
        ("trigger_every 0", Window::global().trigger_every(0)),
        (
            "trigger_periodically 0",
            Window::global().trigger_periodically(Duration::ZERO),
        ),
        (
            "idle_timeout 0",
            Window::fixed(ms(10), ts).idle_timeout(Duration::ZERO),
        ),
        (
            "lateness on global",
            Window::global().allowed_lateness(ms(1)),
        ),
        (
            "lateness on sliding",
            Window::sliding(ms(10), ms(5), ts).allowed_lateness(ms(1)),
        ),
        (
            "lateness on session",
            Window::session(ms(10), ts).allowed_lateness(ms(1)),
        ),
        (
            "lateness on periodic",
            Window::periodic(ms(10)).allowed_lateness(ms(1)),
        ),
        // The first error is kept: a later valid setting does not hide it.
        ("count 0, then a trigger", Window::count(0).trigger_every(2)),
    ];
    for (what, window) in cases {
        assert_config(windowed(window), what);
    }
    // The boundary values are fine.
    assert!(windowed(Window::fixed(ms(1), ts)).is_ok());
    assert!(windowed(Window::sliding(ms(10), ms(10), ts)).is_ok());
    assert!(windowed(Window::fixed(ms(10), ts).allowed_lateness(Duration::ZERO)).is_ok());
}

#[test]
fn zero_readers_or_block_size_are_config_errors_not_clamped() {
    let path = temp_file("options.txt", b"one two\nthree\n");
    let run =
        |source: FileSource| guarded(move || Flow::from_source(source).collect::<Vec<Chunk>>());
    assert_config(
        run(FileSource::new(&path).readers(0)),
        "FileSource readers 0",
    );
    assert_config(
        run(FileSource::new(&path).block_size(0)),
        "FileSource block_size 0",
    );
    let lines = LinesSource::new(&path).readers(0);
    assert_config(
        guarded(move || Flow::from_source(lines).collect::<Vec<String>>()),
        "LinesSource readers 0",
    );
    let lines = LinesSource::new(&path).block_size(0);
    assert_config(
        guarded(move || Flow::from_source(lines).collect::<Vec<String>>()),
        "LinesSource block_size 0",
    );
    let reader = ReaderSource::new(std::io::Cursor::new(b"a b".to_vec()), "cursor").block_size(0);
    assert_config(
        guarded(move || Flow::from_source(reader).collect::<Vec<Chunk>>()),
        "ReaderSource block_size 0",
    );
    // 1 is the smallest valid value, and it reads everything.
    let chunks = run(FileSource::new(&path).readers(1).block_size(1)).unwrap();
    let words: usize = chunks.iter().map(|c| c.words().count()).sum();
    assert_eq!(words, 3);
    let _ = std::fs::remove_file(&path);
}

// ---------------------------------------------------------------------------------------
// Bad files
// ---------------------------------------------------------------------------------------

fn read_lines(path: &Path, readers: usize) -> flowstage::Result<Vec<String>> {
    let source = LinesSource::new(path).readers(readers);
    guarded(move || Flow::from_source(source).collect())
}

#[test]
fn a_missing_file_of_lines_is_a_typed_error_naming_it() {
    let path = temp_dir().join("does-not-exist.txt");
    let error = read_lines(&path, 2).unwrap_err();
    match error.root_cause() {
        FlowError::Io {
            path: Some(named),
            source,
            ..
        } => {
            assert_eq!(named, &path);
            assert_eq!(source.kind(), ErrorKind::NotFound);
        }
        other => panic!("expected FlowError::Io, got {other:?}"),
    }
    let shown = error.root_cause().to_string();
    assert!(
        shown.starts_with(&format!("cannot open {}: ", path.display())),
        "{shown}"
    );
}

#[test]
fn a_directory_of_lines_is_a_typed_error_naming_it() {
    let dir = temp_dir();
    let error = read_lines(&dir, 2).unwrap_err();
    match error.root_cause() {
        FlowError::Io {
            path: Some(path), ..
        } => assert_eq!(path, &dir),
        other => panic!("expected FlowError::Io, got {other:?}"),
    }
}

/// A named pipe, a device: no length to split into byte ranges. Before, a file source
/// read a FIFO as an empty file (the run ended `Ok` with nothing, whatever was written
/// into it), and opening it blocked until a writer came.
#[test]
fn a_pipe_or_a_device_given_as_a_file_is_a_typed_error_not_an_empty_file() {
    let fifo = temp_dir().join("a-fifo");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let not_regular = |path: &Path, error: FlowError| match error.root_cause() {
        FlowError::Io {
            operation: IoOperation::Open,
            path: Some(named),
            source,
            ..
        } => {
            assert_eq!(named, path);
            assert_eq!(source.kind(), ErrorKind::InvalidInput);
            assert!(
                source.to_string().contains("not a regular file"),
                "{source}"
            );
        }
        other => panic!("expected FlowError::Io on open, got {other:?}"),
    };
    for path in [fifo.clone(), PathBuf::from("/dev/null")] {
        // No writer ever opens the FIFO: a source that opened it would hang here.
        let lines = read_lines(&path, 2).unwrap_err();
        not_regular(&path, lines);
        let source = FileSource::new(&path);
        let chunks = guarded(move || Flow::from_source(source).collect::<Vec<Chunk>>());
        not_regular(&path, chunks.unwrap_err());
        #[cfg(feature = "csv")]
        {
            // With headers, the CSV source reads the first line before the byte ranges.
            let source = flowstage::source::CsvSource::new(&path);
            let rows = guarded(move || Flow::from_source(source).collect::<Vec<Vec<String>>>());
            not_regular(&path, rows.unwrap_err());
        }
    }
    std::fs::remove_file(&fifo).unwrap();
}

/// `?` on a `std::io::Error` in user code returning `flowstage::Result` is an I/O error,
/// not "could not start the runtime" (`FlowError::Runtime` converted every I/O error).
#[test]
fn an_io_error_met_with_question_mark_in_user_code_is_an_io_error_not_a_runtime_one() {
    fn job(config: &Path) -> flowstage::Result<Vec<usize>> {
        let text = std::fs::read_to_string(config)?;
        Flow::from_iter(text.lines().map(str::len).collect::<Vec<_>>()).collect()
    }
    let error = job(&temp_dir().join("no-such-config.txt")).unwrap_err();
    match &error {
        FlowError::Io {
            operation: IoOperation::Unknown,
            path: None,
            offset: None,
            source,
        } => {
            assert_eq!(source.kind(), ErrorKind::NotFound);
            assert_eq!(error.to_string(), format!("I/O error: {source}"));
        }
        other => panic!("expected an unlocated FlowError::Io, got {other:?}"),
    }
    assert!(!error.to_string().contains("runtime"), "{error}");
}

/// Sinks that cannot create their file name it and say so.
#[test]
fn sinks_that_cannot_create_their_file_name_it() {
    let path = temp_dir().join("no-such-folder").join("out");
    let errors = [
        flowstage::sink::CsvSink::<(u32,)>::create(&path).unwrap_err(),
        flowstage::sink::JsonLinesSink::<u32>::create(&path).unwrap_err(),
    ];
    for error in errors {
        match &error {
            FlowError::Io {
                operation: IoOperation::Create,
                path: Some(named),
                source,
                ..
            } => {
                assert_eq!(named, &path);
                assert_eq!(source.kind(), ErrorKind::NotFound);
                assert_eq!(
                    error.to_string(),
                    format!("cannot create {}: {source}", path.display())
                );
            }
            other => panic!("expected FlowError::Io, got {other:?}"),
        }
    }
}

/// Where the child process of the unreadable-file test finds its file.
const UNREADABLE_ENV: &str = "FLOWSTAGE_TEST_UNREADABLE_FILE";

fn assert_permission_denied(path: &Path) {
    let error = read_lines(path, 2).unwrap_err();
    match error.root_cause() {
        FlowError::Io {
            path: Some(named),
            source,
            ..
        } => {
            assert_eq!(named, path);
            assert_eq!(source.kind(), ErrorKind::PermissionDenied, "{source}");
        }
        other => panic!("expected FlowError::Io, got {other:?}"),
    }
}

/// A file with mode 000. Root reads it anyway (the kernel skips permission checks for
/// it), so as root the test re-runs itself as `nobody` (uid 65534), where the mode
/// holds; either way the permission error is really exercised, not assumed.
#[test]
fn an_unreadable_file_is_a_typed_permission_error() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    if let Ok(path) = std::env::var(UNREADABLE_ENV) {
        // The child, as nobody.
        let path = PathBuf::from(path);
        assert!(
            std::fs::File::open(&path).is_err(),
            "mode 000 does not stop this process either: cannot test it here"
        );
        assert_permission_denied(&path);
        return;
    }
    let dir = temp_dir();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = temp_file("unreadable.txt", b"secret\nlines\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&path).is_err() {
        // Not root: the mode is enforced on us.
        assert_permission_denied(&path);
    } else {
        // Root: permissions are not checked for us. Reading succeeds, and must give the
        // file as it is (the source invents nothing)...
        let mut lines = read_lines(&path, 1).expect("root reads a mode-000 file");
        lines.sort();
        assert_eq!(lines, ["lines", "secret"]);
        // ...and the permission error is exercised as nobody.
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "an_unreadable_file_is_a_typed_permission_error",
                "--test-threads=1",
            ])
            .env(UNREADABLE_ENV, &path)
            .uid(65534)
            .gid(65534)
            .status()
            .expect("run this test as nobody");
        assert!(status.success(), "the test as nobody failed: {status}");
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn invalid_utf8_deep_in_a_file_names_its_exact_byte_offset() {
    // ~1 MB of good lines, read by 3 readers in 4 KiB blocks; one bad byte far from the
    // start of any range or block.
    let mut bytes = Vec::new();
    while bytes.len() < 1_000_000 {
        bytes.extend_from_slice(b"a perfectly good line of text\n");
    }
    let bad_at = 777_777;
    let line_start = bytes[..bad_at].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    assert!(bad_at > line_start + 3, "the bad byte is inside its line");
    bytes[bad_at] = 0xff;
    let path = temp_file("bad-utf8.txt", &bytes);
    let source = LinesSource::new(&path).readers(3).block_size(4096);
    let error = guarded(move || Flow::from_source(source).collect::<Vec<String>>()).unwrap_err();
    match error.root_cause() {
        FlowError::InvalidUtf8 {
            path: named,
            offset,
        } => {
            assert_eq!(named, &path);
            assert_eq!(*offset, bad_at as u64);
        }
        other => panic!("expected FlowError::InvalidUtf8, got {other:?}"),
    }
    assert!(
        error.to_string().contains(&format!("byte {bad_at}")),
        "{error}"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_file_that_shrinks_while_read_fails_the_run_instead_of_losing_lines() {
    // 4 MB of lines. The reader stays within the demand bound of what was taken (see
    // tests/cancellation.rs: about 100 KB here), so cutting the file to 1 MB after the
    // first lines happens before it gets there.
    let line = b"0123456789abcdef0123456789abcde\n";
    let bytes: Vec<u8> = line.iter().copied().cycle().take(4 << 20).collect();
    let path = temp_file("shrinking.txt", &bytes);
    let cut = 1u64 << 20;
    let shrinking = path.clone();
    let (taken, outcome) = guarded(move || {
        let source = LinesSource::new(&shrinking).readers(1).block_size(4096);
        let mut lines = Flow::from_source(source).into_iter();
        let first: Vec<String> = lines
            .by_ref()
            .take(10)
            .collect::<Result<_, _>>()
            .expect("the first lines are fine");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&shrinking)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let mut count = first.len() as u64;
        let mut ended = None;
        for line in lines {
            match line {
                Ok(_) => count += 1,
                Err(error) => {
                    ended = Some(error);
                    break;
                }
            }
        }
        (count, ended)
    });
    let error = outcome.expect("a shrunk file must not end the run as if complete");
    assert!(taken <= cut / line.len() as u64, "{taken} lines");
    match error.root_cause() {
        FlowError::Io {
            operation,
            path: Some(named),
            offset,
            source,
        } => {
            assert_eq!(*operation, IoOperation::Read);
            assert_eq!(named, &path);
            assert_eq!(*offset, Some(cut), "where the file ended");
            assert_eq!(source.kind(), ErrorKind::UnexpectedEof);
        }
        other => panic!("expected FlowError::Io, got {other:?}"),
    }
    let _ = std::fs::remove_file(&path);
}

// ---------------------------------------------------------------------------------------
// The chunker, over arbitrary bytes
// ---------------------------------------------------------------------------------------

fn records(bytes: &[u8], delimiter: Delimiter) -> Vec<&[u8]> {
    bytes
        .split(|&b| delimiter.is(b))
        .filter(|r| !r.is_empty())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any bytes (not only text), any number of ranges (more ranges than bytes too), any
    /// block size, both delimiters, read or mapped: every chunk is exactly the file's
    /// bytes at its offset, starts at a record boundary and ends on a delimiter or at the
    /// end; chunks do not overlap; and the records of the chunks in offset order are the
    /// file's records — none lost, split or duplicated.
    #[test]
    fn chunks_tile_the_records_of_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..4000),
        dense in proptest::collection::vec(prop_oneof![Just(b'x'), Just(b' '), Just(b'\n')], 0..400),
        use_dense in any::<bool>(),
        readers in 1usize..=24,
        block_size in 1usize..=300,
        lines in any::<bool>(),
        mmap in any::<bool>(),
        case in any::<u64>(),
    ) {
        // Random bytes hold few delimiters: mix in short, delimiter-heavy inputs too.
        let bytes = if use_dense { dense } else { bytes };
        let delimiter = if lines { Delimiter::Line } else { Delimiter::Whitespace };
        let path = temp_file(&format!("chunker-{case}"), &bytes);
        let source = FileSource::new(&path)
            .readers(readers)
            .block_size(block_size)
            .delimiter(delimiter);
        // SAFETY: the test's own temporary file; nothing changes it while the flow runs.
        let source = unsafe { source.mmap(mmap) };
        let mut chunks: Vec<(u64, Vec<u8>)> = common::try_guarded(move || {
            Flow::from_source(source)
                .map(|chunk: Chunk| (chunk.offset(), chunk.bytes().to_vec()))
                .collect::<Vec<_>>()
        })
        .map_err(TestCaseError::fail)?
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let _ = std::fs::remove_file(&path);
        chunks.sort();
        let mut previous_end = 0u64;
        let mut read = Vec::new();
        for (offset, chunk) in &chunks {
            let (start, end) = (*offset as usize, *offset as usize + chunk.len());
            prop_assert!(!chunk.is_empty(), "an empty chunk at {}", offset);
            prop_assert!(end <= bytes.len());
            prop_assert_eq!(&bytes[start..end], &chunk[..], "chunk at {} is not the file's bytes", offset);
            prop_assert!(*offset >= previous_end, "chunks overlap at {}", offset);
            prop_assert!(start == 0 || delimiter.is(bytes[start - 1]), "chunk at {} starts mid-record", offset);
            prop_assert!(end == bytes.len() || delimiter.is(bytes[end - 1]), "chunk at {} ends mid-record", offset);
            previous_end = end as u64;
            read.extend(records(chunk, delimiter));
        }
        prop_assert_eq!(read, records(&bytes, delimiter));
        if !lines {
            // The words of a chunk are those `is_word_separator` splits.
            let words: usize = chunks.iter().map(|(_, c)| Chunk::from_bytes(c.clone()).words().count()).sum();
            prop_assert_eq!(words, bytes.split(|&b| is_word_separator(b)).filter(|w| !w.is_empty()).count());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The error users match on (issue 18 item 6)
// ---------------------------------------------------------------------------------------

#[test]
fn invalid_utf8_is_the_root_cause_of_the_run_error() {
    // `LinesSource`'s documented error is what users match on: the root cause of the
    // `StageFailed` that names the reader's stage.
    let path = temp_file("bad-utf8-top.txt", b"good\nbad \xff line\nmore\n");
    let source = LinesSource::new(&path);
    let error = guarded(move || Flow::from_source(source).collect::<Vec<String>>()).unwrap_err();
    assert!(error.stage().is_some(), "{error:?}");
    match error.root_cause() {
        FlowError::InvalidUtf8 {
            path: named,
            offset,
        } => {
            assert_eq!(named, &path);
            assert_eq!(*offset, 9);
        }
        other => panic!("expected FlowError::InvalidUtf8, got {other:?}"),
    }
}

#[test]
fn root_cause_reaches_the_typed_error_under_stage_and_operator() {
    let record = || FlowError::Record {
        path: "orders.csv".into(),
        line: 7,
        message: "field `amount`".into(),
    };
    let error = guarded(move || {
        Flow::from_iter(0..10u32)
            .try_map(move |x: u32| if x == 7 { Err((x, record())) } else { Ok(x) })
            .collect::<Vec<u32>>()
    })
    .unwrap_err();
    // The run's error names the stage and the operator; the root is the typed record.
    assert!(matches!(error, FlowError::StageFailed { .. }), "{error:?}");
    match error.root_cause() {
        FlowError::Record { line, .. } => assert_eq!(*line, 7),
        other => panic!("expected the Record under the stage, got {other:?}"),
    }
    // A user error that is no `FlowError`: the root `FlowError` is the run's own.
    let error = guarded(|| {
        Flow::from_iter(0..10u32)
            .try_map(|x: u32| if x == 3 { Err((x, "three")) } else { Ok(x) })
            .collect::<Vec<u32>>()
    })
    .unwrap_err();
    assert!(std::ptr::eq(error.root_cause(), &error), "{error:?}");
}
