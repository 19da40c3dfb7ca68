//! What a run tells the ecosystem's observability crates, each behind its feature:
//! `tracing` (a span per stage; events when a stage starts, fails, is cancelled, a
//! supervised worker restarts, late events arrive) and `metrics` (the facade's counters
//! and gauges per stage, labelled with the stage's name, so any exporter works).
//! Without the features every function here is empty and compiles away.

use crate::error::{FlowError, StageInfo};

/// The span a stage runs in (`tracing`): `stage{name, kind, index}`.
#[cfg(feature = "tracing")]
pub(crate) fn span(stage: &StageInfo) -> tracing::Span {
    tracing::info_span!("stage", name = %stage.name, kind = %stage.kind, index = stage.index)
}

/// The stage starts (inside its span).
pub(crate) fn started(stage: &StageInfo) {
    #[cfg(feature = "tracing")]
    tracing::debug!(stage = %stage.name, "stage started");
    let _ = stage;
}

/// The stage ended with `error`.
pub(crate) fn failed(stage: &StageInfo, error: &FlowError) {
    #[cfg(feature = "tracing")]
    tracing::error!(stage = %stage.name, error = %error, "stage failed");
    let _ = (stage, error);
}

/// The run is cancelling its stages, because of `cause` (a failure) or because it was
/// cancelled or dropped (`None`).
pub(crate) fn cancelled(stages: usize, cause: Option<&FlowError>) {
    #[cfg(feature = "tracing")]
    match cause {
        Some(error) => tracing::warn!(stages, cause = %error, "run cancelled after a failure"),
        None => tracing::info!(stages, "run cancelled"),
    }
    let _ = (stages, cause);
}

/// A supervised worker failed with `message` and is restarted.
pub(crate) fn restarted(message: &str) {
    #[cfg(feature = "tracing")]
    tracing::warn!(failure = message, "worker restarted");
    let _ = message;
}

/// `n` events came too late for their window.
pub(crate) fn late(stage: &StageInfo, n: u64) {
    #[cfg(feature = "tracing")]
    tracing::debug!(stage = %stage.name, late = n, "late events");
    let _ = (stage, n);
}

/// A stage's counters and gauges in the `metrics` facade, registered once per stage.
#[cfg(feature = "metrics")]
#[derive(Debug)]
pub(crate) struct Exported {
    pub(crate) events_in: metrics::Counter,
    pub(crate) events_out: metrics::Counter,
    pub(crate) dropped: metrics::Counter,
    pub(crate) late: metrics::Counter,
    pub(crate) busy_microseconds: metrics::Counter,
    pub(crate) demand: metrics::Gauge,
    pub(crate) buffered: metrics::Gauge,
}

#[cfg(feature = "metrics")]
impl Exported {
    pub(crate) fn new(stage: &StageInfo) -> Self {
        let labels = [("stage", stage.name.clone())];
        Exported {
            events_in: metrics::counter!("flowstage_events_in", &labels),
            events_out: metrics::counter!("flowstage_events_out", &labels),
            dropped: metrics::counter!("flowstage_events_dropped", &labels),
            late: metrics::counter!("flowstage_events_late", &labels),
            busy_microseconds: metrics::counter!("flowstage_busy_microseconds", &labels),
            demand: metrics::gauge!("flowstage_demand", &labels),
            buffered: metrics::gauge!("flowstage_buffered", &labels),
        }
    }
}
