//! The run's [`Report`] on the cluster: each worker counts what its operators did (once per
//! batch, as the local runtime does), the time each spent in its own code (once per
//! activation), the time each source was held back by backpressure (its
//! `waiting_for_demand`), and what its error policies skipped or dead-lettered; once the
//! run is complete everywhere the counts travel to worker 0, which lists every operator
//! instance of the cluster and sums each error policy over the workers.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{StageInfo, StageKind};
use crate::stage::{ErrorCounters, ErrorSnapshot, Report, StageSnapshot};

/// What one operator instance (a source share, a layer's worker) did.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    events_in: Cell<u64>,
    batches_in: Cell<u64>,
    events_out: Cell<u64>,
    late: Cell<u64>,
    /// Nanoseconds in the operator's own code.
    busy: Cell<u64>,
    /// Nanoseconds a source held back by backpressure, with the next read to make.
    waiting: Cell<u64>,
}

impl Counters {
    /// A batch of `n` events arrived.
    pub(crate) fn add_in(&self, n: usize) {
        self.events_in.set(self.events_in.get() + n as u64);
        self.batches_in.set(self.batches_in.get() + 1);
    }

    pub(crate) fn add_out(&self, n: usize) {
        self.events_out.set(self.events_out.get() + n as u64);
    }

    pub(crate) fn add_late(&self, n: u64) {
        self.late.set(self.late.get() + n);
    }

    /// The operator's own code ran from `started` until now.
    pub(crate) fn add_busy(&self, started: Instant) {
        self.busy
            .set(self.busy.get().saturating_add(nanos(started)));
    }

    /// The source waited on backpressure from `since` until now.
    pub(crate) fn add_waiting(&self, since: Instant) {
        self.waiting
            .set(self.waiting.get().saturating_add(nanos(since)));
    }
}

fn nanos(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One worker's counters.
#[derive(Debug, Default)]
pub(crate) struct WorkerReport {
    operators: u64,
    stages: Vec<(u64, String, StageKind, u64, Rc<Counters>)>,
    errors: Vec<(&'static str, Arc<ErrorCounters>)>,
}

/// A worker's counters as they travel to worker 0: its operator instances
/// `(operator, name, kind, partition, [in, batches, out, late, busy ns, waiting ns])` and
/// its error policies' `(operator, skipped, dead-lettered)`, in the order every worker
/// builds them.
pub(crate) type WireReport = (
    Vec<(u64, String, u8, u64, [u64; 6])>,
    Vec<(String, u64, u64)>,
);

impl WorkerReport {
    /// Numbers the next operator: the same number on every worker (every worker builds
    /// the same plan), so that worker 0 can put the instances of one operator together.
    pub(crate) fn operator(&mut self) -> u64 {
        self.operators += 1;
        self.operators
    }

    /// Counters for instance `partition` of `operator`, which runs on this worker.
    pub(crate) fn stage(
        &mut self,
        operator: u64,
        name: String,
        kind: StageKind,
        partition: usize,
    ) -> Rc<Counters> {
        let counters = Rc::new(Counters::default());
        self.stages
            .push((operator, name, kind, partition as u64, counters.clone()));
        counters
    }

    /// An error policy's counters (every worker registers the same ones, in order).
    pub(crate) fn error_counters(&mut self, operator: &'static str, counters: Arc<ErrorCounters>) {
        self.errors.push((operator, counters));
    }

    pub(crate) fn wire(&self) -> WireReport {
        let stages = self
            .stages
            .iter()
            .map(|(operator, name, kind, partition, counters)| {
                let kind = match kind {
                    StageKind::Producer => 0,
                    StageKind::ProducerConsumer => 1,
                    StageKind::Consumer => 2,
                };
                let counts = [
                    counters.events_in.get(),
                    counters.batches_in.get(),
                    counters.events_out.get(),
                    counters.late.get(),
                    counters.busy.get(),
                    counters.waiting.get(),
                ];
                (*operator, name.clone(), kind, *partition, counts)
            })
            .collect();
        let errors = self
            .errors
            .iter()
            .map(|(operator, counters)| {
                (
                    operator.to_string(),
                    counters.skipped(),
                    counters.dead_lettered(),
                )
            })
            .collect();
        (stages, errors)
    }
}

/// The cluster's report from every worker's: each operator instance once, in the order
/// the operators were built (instances by partition), and each error policy summed over
/// the workers.
pub(crate) fn merge(parts: Vec<WireReport>) -> Report {
    let mut stages = Vec::new();
    let mut errors: Vec<ErrorSnapshot> = Vec::new();
    for (part_stages, part_errors) in parts {
        stages.extend(part_stages);
        for (at, (operator, skipped, dead_lettered)) in part_errors.into_iter().enumerate() {
            match errors.get_mut(at) {
                Some(sum) => {
                    sum.skipped += skipped;
                    sum.dead_lettered += dead_lettered;
                }
                None => errors.push(ErrorSnapshot {
                    operator,
                    skipped,
                    dead_lettered,
                }),
            }
        }
    }
    stages.sort_by_key(|(operator, _, _, partition, _)| (*operator, *partition));
    let stages = stages
        .into_iter()
        .enumerate()
        .map(|(index, (_, name, kind, _, counts))| StageSnapshot {
            stage: StageInfo {
                name,
                kind: match kind {
                    0 => StageKind::Producer,
                    1 => StageKind::ProducerConsumer,
                    _ => StageKind::Consumer,
                },
                index,
            },
            events_in: counts[0],
            batches_in: counts[1],
            events_out: counts[2],
            demand: 0,
            buffered: 0,
            dropped: 0,
            late: counts[3],
            busy: Duration::from_nanos(counts[4]),
            waiting_for_demand: Duration::from_nanos(counts[5]),
        })
        .collect();
    Report {
        stages,
        tolerated: Vec::new(),
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_listed_once_and_policies_summed() {
        let worker = |partition: usize, skipped: u64| {
            let mut report = WorkerReport::default();
            let source = report.operator();
            let counters = report.stage(
                source,
                format!("from_iter[{partition}]"),
                StageKind::Producer,
                partition,
            );
            counters.add_out(10);
            let layer = report.operator();
            let counters = report.stage(
                layer,
                format!("partition[{partition}]"),
                StageKind::ProducerConsumer,
                partition,
            );
            counters.add_in(7);
            counters.add_late(1);
            if let Some(earlier) = Instant::now().checked_sub(Duration::from_millis(5)) {
                counters.add_busy(earlier);
                counters.add_waiting(earlier);
            }
            let policy = Arc::new(ErrorCounters::default());
            policy.add_skipped(skipped);
            report.error_counters("try_map", policy);
            report.wire()
        };
        let report = merge(vec![worker(1, 2), worker(0, 3)]);
        let names: Vec<&str> = report
            .stages
            .iter()
            .map(|s| s.stage.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "from_iter[0]",
                "from_iter[1]",
                "partition[0]",
                "partition[1]"
            ]
        );
        assert_eq!(report.stages[2].events_in, 7);
        assert_eq!(report.stages[3].late, 1);
        // Times travel as nanoseconds and come back as the durations measured.
        assert!(report.stages[2].busy >= Duration::from_millis(5));
        assert!(report.stages[3].waiting_for_demand >= Duration::from_millis(5));
        assert_eq!(report.stages[0].busy, Duration::ZERO);
        assert_eq!(report.errors.len(), 1);
        assert_eq!(report.errors[0].skipped, 5);
    }
}
