//! What a run reports: per-stage busy and waiting time, `tracing` spans and events,
//! `metrics` counters, the progress bar of a file source.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstage::flow::Flow;
use flowstage::stage::{Consumer, ConsumerContext};

/// A sink that sleeps for each chunk: the stages before it wait for its demand.
struct Slow;

impl Consumer for Slow {
    type Item = u64;

    async fn handle_events(
        &mut self,
        _events: Vec<u64>,
        _context: &mut ConsumerContext,
    ) -> Result<(), flowstage::StageError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }
}

#[test]
fn a_slow_sink_is_busy_and_its_source_waits_for_demand() {
    let report = Flow::from_iter(0..20_000u64).run_into(Slow).unwrap();
    let source = &report.stages[0];
    let sink = report
        .stages
        .iter()
        .find(|s| s.stage.name == "sink")
        .unwrap();
    // The sink slept 2 ms per chunk, at least: its busy time is at least that.
    assert!(
        sink.busy >= Duration::from_millis(2) * sink.batches_in as u32,
        "{report}"
    );
    assert!(sink.batches_in >= 20, "{report}");
    // The source made 20 000 events at once and had to wait for the sink's demand.
    assert!(source.waiting_for_demand > Duration::ZERO, "{report}");
    let text = report.to_string();
    assert!(
        text.contains("from_iter[0]") && text.contains("sink"),
        "{text}"
    );
}

#[cfg(feature = "tracing")]
#[test]
fn tracing_has_a_span_per_stage_and_events_for_start_failure_and_cancellation() {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // A runtime on this thread, so that the stages' tasks see this thread's subscriber.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(
            Flow::from_iter(0..100u64)
                .try_map(|n: u64| {
                    if n == 50 {
                        Err((n, "bad fifty"))
                    } else {
                        Ok(n)
                    }
                })
                .shuffle(flowstage::flow::Shuffle::shuffle().stages(2))
                .run_async(),
        )
    });
    assert!(result.is_err());
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("stage{name=from_iter[0]"), "{text}");
    assert!(text.contains("stage{name=shuffle[1]"), "{text}");
    assert!(text.contains("stage started"), "{text}");
    assert!(
        text.contains("stage failed") && text.contains("bad fifty"),
        "{text}"
    );
    assert!(text.contains("run cancelled after a failure"), "{text}");
}

#[cfg(feature = "metrics")]
#[test]
fn metrics_counts_events_per_stage_in_the_facade() {
    use std::collections::HashMap;

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    /// Counters by (name, stage label).
    #[derive(Default)]
    struct Counts(Mutex<HashMap<(String, String), Arc<AtomicU64>>>);

    impl Counts {
        fn get(&self, name: &str, stage: &str) -> u64 {
            let counts = self.0.lock().unwrap();
            counts
                .get(&(name.to_string(), stage.to_string()))
                .map_or(0, |c| c.load(SeqCst))
        }
    }

    impl Recorder for Counts {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let stage = key
                .labels()
                .find(|l| l.key() == "stage")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let counter = self
                .0
                .lock()
                .unwrap()
                .entry((key.name().to_string(), stage))
                .or_default()
                .clone();
            Counter::from_arc(counter)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    let counts = Counts::default();
    // The stages register their counters when the run starts, on this thread.
    let report = metrics::with_local_recorder(&counts, || {
        Flow::from_iters(vec![0..3_000u64, 3_000..5_000])
            .filter(|n| n % 2 == 0)
            .run()
            .unwrap()
    });
    assert_eq!(counts.get("flowstage_events_out", "from_iters[0]"), 1_500);
    assert_eq!(counts.get("flowstage_events_out", "from_iters[1]"), 1_000);
    assert_eq!(counts.get("flowstage_events_in", "sink"), 2_500);
    let sink = report
        .stages
        .iter()
        .find(|s| s.stage.name == "sink")
        .unwrap();
    assert_eq!(sink.events_in, 2_500);
}

#[cfg(feature = "progress")]
#[test]
fn a_file_source_brings_its_progress_bar_to_the_end() {
    use flowstage::source::FileSource;
    let dir = std::env::temp_dir().join(format!("flowstage-progress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("words.txt");
    let text = "lorem ipsum dolor sit amet\n".repeat(20_000);
    std::fs::write(&path, &text).unwrap();
    let bar = indicatif::ProgressBar::hidden();
    let chunks: Vec<_> = Flow::from_source(
        FileSource::new(&path)
            .readers(3)
            .block_size(4096)
            .progress_with(bar.clone()),
    )
    .collect()
    .unwrap();
    assert!(!chunks.is_empty());
    assert_eq!(bar.length(), Some(text.len() as u64));
    assert_eq!(bar.position(), text.len() as u64);
    assert!(bar.is_finished());
}
