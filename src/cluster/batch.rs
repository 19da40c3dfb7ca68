//! `batch(size, timeout)` on the cluster: every event to one batching operator on worker
//! 0 (one stage locally), which closes a batch at `size` events or `timeout` after its
//! first event, and the last one at the end of input. The chain after `batch` runs there,
//! as it is fused into the batching stage locally.

use std::time::{Duration, Instant};

use timely::dataflow::operators::generic::Operator;

use super::emit::emit;
use super::exchange::exchange;
use super::plan::{ClusterCompiler, ClusterStream, Wire};
use super::source::{guarded, report};
use crate::error::{StageInfo, StageKind};
use crate::flow::{Batch, Logic, PartitionInfo};

/// The batching operator.
pub(crate) fn batch<'s, T, L>(
    compiler: &mut ClusterCompiler<'s>,
    upstream: ClusterStream<'s, T>,
    size: usize,
    timeout: Duration,
    mut logic: L,
) -> ClusterStream<'s, L::Out>
where
    T: Wire,
    L: Logic<In = Batch<T>> + 'static,
{
    let scope = compiler.scope;
    let operator = compiler.report.borrow_mut().operator();
    let here = scope.index() == 0;
    let counters = here.then(|| {
        compiler.report.borrow_mut().stage(
            operator,
            "batch[0]".into(),
            StageKind::ProducerConsumer,
            0,
        )
    });
    let stage = StageInfo {
        name: "batch[0]".into(),
        kind: StageKind::ProducerConsumer,
        index: 0,
    };
    let failure = compiler.failure.clone();
    let stream =
        upstream
            .stream
            .unary_frontier(exchange(|_: &T| 0u64), "batch", move |capability, info| {
                let activator = scope.activator_for(info.address);
                if here {
                    logic.start(PartitionInfo { index: 0, count: 1 });
                }
                let mut hold = here.then_some(capability);
                let mut open: Vec<T> = Vec::new();
                let mut opened_at: Option<Instant> = None;
                let mut out = Vec::new();
                move |(input, frontier), output| {
                    let Some(held) = hold.as_mut() else {
                        input.for_each(|_, data| data.clear());
                        return;
                    };
                    let started = Instant::now();
                    let mut full: Vec<Batch<T>> = Vec::new();
                    input.for_each(|_, data| {
                        if let Some(counters) = &counters {
                            counters.add_in(data.len());
                        }
                        for event in data.drain(..) {
                            if open.is_empty() {
                                opened_at = Some(Instant::now());
                                open.reserve(size.min(1 << 16));
                            }
                            open.push(event);
                            if open.len() == size {
                                full.push(Batch::from(std::mem::take(&mut open)));
                                opened_at = None;
                            }
                        }
                    });
                    let ended = frontier.frontier().is_empty();
                    let timed_out = opened_at
                        .and_then(|at| at.checked_add(timeout))
                        .is_some_and(|deadline| deadline <= Instant::now());
                    if (ended || timed_out) && !open.is_empty() {
                        full.push(Batch::from(std::mem::take(&mut open)));
                        opened_at = None;
                    }
                    let ran = guarded(&failure, &stage, || {
                        if !full.is_empty() {
                            logic.batch(&mut full, &mut out);
                        }
                        if ended {
                            logic.done(&mut out);
                        }
                    });
                    if let Some(counters) = &counters {
                        counters.add_busy(started);
                    }
                    if !ran {
                        out.clear();
                        hold = None;
                        return;
                    }
                    if let Err(error) = crate::flow::settled_blocking(&mut logic) {
                        report(&failure, &stage, error);
                    }
                    if let Some(counters) = &counters {
                        counters.add_out(out.len());
                    }
                    emit(output, held, &mut out);
                    match frontier.frontier().iter().next() {
                        Some(time) => held.downgrade(time),
                        None => hold = None,
                    }
                    if let Some(deadline) = opened_at.and_then(|at| at.checked_add(timeout)) {
                        activator
                            .activate_after(deadline.saturating_duration_since(Instant::now()));
                    }
                }
            });
    ClusterStream {
        stream,
        instances: 1,
    }
}
