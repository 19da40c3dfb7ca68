//! The word-count example, run as a user runs it: its output on generated corpora and on
//! awkward files equals a simple sequential count, from a file and from standard input.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[path = "../examples/common/corpus.rs"]
mod corpus;
use corpus::Corpus;

/// The example binary `cargo test` built next to this test.
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = profile_dir.join("examples").join("word_count");
    assert!(path.exists(), "build the example first: {}", path.display());
    path
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowstage-wc-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

/// The expected output: a plain sequential count, formatted as the example promises.
fn reference(bytes: &[u8], top: usize) -> String {
    let mut counts: HashMap<&[u8], u64> = HashMap::new();
    for word in bytes
        .split(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word).or_default() += 1;
    }
    let total: u64 = counts.values().sum();
    let mut ranked: Vec<(&[u8], u64)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut out = format!("total {total}\ndistinct {}\n", ranked.len());
    for (word, count) in ranked.into_iter().take(top) {
        out.push_str(&format!("{count}\t{}\n", String::from_utf8_lossy(word)));
    }
    out
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut command = Command::new(example());
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = command.spawn().expect("start the example");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        // Write from a thread so a large input cannot deadlock against our reading.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let output = child.wait_with_output().expect("example output");
    assert!(
        output.status.success(),
        "example failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("stdout is UTF-8")
}

fn check_file(name: &str, bytes: &[u8], top: usize, stages: &[usize]) {
    let path = temp_file(name, bytes);
    let path = path.to_str().expect("utf-8 path");
    let expected = reference(bytes, top);
    for stages in stages {
        let output = run(
            &[
                path,
                "--top",
                &top.to_string(),
                "--stages",
                &stages.to_string(),
            ],
            None,
        );
        assert_eq!(output, expected, "{name} with {stages} stages");
    }
}

#[test]
fn generated_corpora_match_the_sequential_count() {
    for (seed, size, vocabulary) in [(1, 200_000, 50), (2, 3_000_000, 20_000), (3, 1_000, 5)] {
        let text = Corpus::new(size)
            .seed(seed)
            .vocabulary(vocabulary)
            .generate();
        check_file(&format!("corpus-{seed}"), &text, 25, &[1, 2, 3, 7]);
    }
}

#[test]
fn awkward_whitespace_and_bytes_count_as_specified() {
    check_file("crlf", b"one two\r\nthree one\r\n", 10, &[1, 2, 4]);
    check_file("tabs-and-feeds", b"a\tb\x0bc\x0cd  a\n\n\tb", 10, &[1, 3]);
    check_file("no-final-newline", b"last line has no newline", 10, &[1, 2]);
    check_file(
        "invalid-utf8",
        b"caf\xc3\xa9 \xff\xfe bad \xff\xfe caf\xc3\xa9",
        10,
        &[1, 2],
    );
    check_file(
        "unicode-space-is-not-whitespace",
        "a\u{a0}b a".as_bytes(),
        10,
        &[1, 2],
    );
    check_file("ties-by-bytes", b"b a c b a c", 2, &[1, 2]);
}

#[test]
fn a_multi_megabyte_line_without_newlines() {
    let mut text = Vec::new();
    for i in 0..400_000u32 {
        text.extend_from_slice(format!("w{} ", i % 1000).as_bytes());
    }
    text.extend_from_slice(&vec![b'z'; 2 << 20]);
    check_file("long-line", &text, 5, &[1, 2, 3]);
}

#[test]
fn an_empty_file_counts_nothing() {
    check_file("empty", b"", 10, &[1, 2]);
    check_file("only-spaces", b" \n\t \r\n", 10, &[1, 2]);
}

#[test]
fn standard_input_matches_the_sequential_count() {
    let text = Corpus::new(2_000_000).seed(9).vocabulary(3000).generate();
    assert_eq!(
        run(&["-", "--top", "15"], Some(&text)),
        reference(&text, 15)
    );
    assert_eq!(
        run(&["-", "--stages", "1"], Some(b"x y x")),
        reference(b"x y x", 10)
    );
    assert_eq!(run(&["-"], Some(b"")), reference(b"", 10));
}

#[test]
fn a_missing_file_is_an_error_not_a_panic() {
    let output = Command::new(example())
        .arg("/nonexistent/flowstage/input.txt")
        .output()
        .expect("run the example");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/flowstage/input.txt"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn the_generated_corpus_depends_on_its_seed_only() {
    let text = Corpus::new(10_000).seed(7).generate();
    assert!(text.len() >= 10_000);
    assert_eq!(text, Corpus::new(10_000).seed(7).generate());
    assert_ne!(text, Corpus::new(10_000).seed(8).generate());
}
