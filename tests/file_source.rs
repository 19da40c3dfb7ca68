//! File sources: parallel byte ranges aligned on a delimiter read every record exactly
//! once, for any number of readers, block size and mapping; bad paths are typed errors.

use std::path::PathBuf;

use flowstage::flow::Flow;
use flowstage::source::{Chunk, Delimiter, FileSource, is_word_separator};
use flowstage::{FlowError, IoOperation};
use proptest::prelude::*;

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowstage-file-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write temp file");
    path
}

fn sequential_words(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split(|&b| is_word_separator(b))
        .filter(|w| !w.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Reads `path` with `source` and returns the words in file order (chunks sorted by offset).
fn words_in_order(source: FileSource) -> Result<Vec<Vec<u8>>, FlowError> {
    let mut chunks: Vec<(u64, Vec<Vec<u8>>)> = Flow::from_source(source)
        .map(|chunk: Chunk| (chunk.offset(), chunk.words().map(<[u8]>::to_vec).collect()))
        .collect()?;
    chunks.sort_by_key(|(offset, _)| *offset);
    Ok(chunks.into_iter().flat_map(|(_, words)| words).collect())
}

fn alphabet() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(b'a'),
        Just(b'b'),
        Just(b' '),
        Just(b'\n'),
        Just(b'\t'),
        Just(b'\r'),
        Just(0x0c),
        Just(0xff),
    ]
}

/// Any byte, with separators and the other bytes below `0x21` (which the word splitter's
/// eight-byte test flags and must then reject) frequent.
fn any_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop_oneof![Just(b' '), Just(b'\n'), Just(b'\t'), Just(b'\r'), Just(0x0b), Just(0x0c)],
        2 => 0u8..0x21,
        1 => Just(0x21u8),
        6 => any::<u8>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn a_chunk_splits_into_the_words_a_byte_by_byte_split_finds(
        bytes in proptest::collection::vec(any_byte(), 0..200),
    ) {
        let expected = sequential_words(&bytes);
        let chunk = Chunk::from_bytes(bytes);
        let words: Vec<Vec<u8>> = chunk.words().map(<[u8]>::to_vec).collect();
        prop_assert_eq!(&words, &expected);
        let owned: Vec<Vec<u8>> = chunk.into_words().map(|w| w.as_bytes().to_vec()).collect();
        prop_assert_eq!(owned, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_word_is_read_once_in_order(
        bytes in proptest::collection::vec(alphabet(), 0..3000),
        readers in 1usize..8,
        block_size in 1usize..64,
        mmap in any::<bool>(),
        case in 0u32..1_000_000,
    ) {
        let path = temp_file(&format!("words-{case}-{readers}-{block_size}"), &bytes);
        let source = FileSource::new(&path).readers(readers).block_size(block_size);
        // SAFETY: the test's own temporary file; nothing changes it while the flow runs.
        let source = unsafe { source.mmap(mmap) };
        let words = words_in_order(source).expect("read");
        prop_assert_eq!(words, sequential_words(&bytes));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn every_line_is_read_once_in_order(
        bytes in proptest::collection::vec(alphabet(), 0..3000),
        readers in 1usize..8,
        block_size in 1usize..64,
        case in 0u32..1_000_000,
    ) {
        let path = temp_file(&format!("lines-{case}-{readers}-{block_size}"), &bytes);
        let source = FileSource::new(&path).readers(readers).block_size(block_size).delimiter(Delimiter::Line);
        let mut chunks: Vec<(u64, Vec<Vec<u8>>)> = Flow::from_source(source)
            .map(|chunk: Chunk| (chunk.offset(), chunk.lines().map(<[u8]>::to_vec).collect()))
            .collect()
            .expect("read");
        chunks.sort_by_key(|(offset, _)| *offset);
        let lines: Vec<Vec<u8>> = chunks.into_iter().flat_map(|(_, lines)| lines).collect();
        let expected: Vec<Vec<u8>> = Chunk::from_bytes(bytes.clone()).lines().map(<[u8]>::to_vec).collect();
        prop_assert_eq!(lines, expected);
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn a_missing_file_is_a_typed_error() {
    let error = Flow::from_source(FileSource::new("/nonexistent/flowstage/file"))
        .collect::<Vec<Chunk>>()
        .expect_err("missing file");
    match error {
        FlowError::Io {
            operation, path, ..
        } => {
            assert_eq!(operation, IoOperation::Open);
            assert_eq!(path, Some(PathBuf::from("/nonexistent/flowstage/file")))
        }
        other => panic!("expected FlowError::Io, got {other}"),
    }
}

#[test]
fn a_directory_is_a_typed_error() {
    let error = Flow::from_source(FileSource::new(std::env::temp_dir()))
        .collect::<Vec<Chunk>>()
        .expect_err("directory");
    assert!(matches!(error, FlowError::Io { .. }), "{error}");
}

#[test]
fn an_empty_file_gives_no_words() {
    let path = temp_file("empty", b"");
    let words = words_in_order(FileSource::new(&path).readers(4)).expect("empty file");
    assert!(words.is_empty());
}

#[test]
fn a_multi_megabyte_line_without_newlines_is_one_word() {
    let bytes = vec![b'x'; 3 << 20];
    let path = temp_file("long-word", &bytes);
    let words =
        words_in_order(FileSource::new(&path).readers(3).block_size(64 << 10)).expect("read");
    assert_eq!(words.len(), 1);
    assert_eq!(words[0].len(), 3 << 20);
}

#[test]
fn invalid_utf8_in_text_lines_names_the_offset() {
    let path = temp_file("bad-utf8", b"good line\nbad \xfe line\n");
    let errors: Vec<String> = Flow::from_source(FileSource::new(&path).delimiter(Delimiter::Line))
        .flat_map(|chunk: Chunk| {
            chunk
                .text_lines()
                .filter_map(|line| line.err().map(|e| e.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
        .expect("read");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("byte 14"), "{}", errors[0]);
}
