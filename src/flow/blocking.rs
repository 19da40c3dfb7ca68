//! `map_blocking`: a step whose work blocks (a synchronous client, a CPU-heavy parse, a
//! file read with `std::io`), run on tokio's blocking pool instead of the threads that
//! run the stages.
//!
//! Like an async step it has a stage of its own behind each output of the layer before
//! it. For each chunk of input, the stage moves the chunk to the blocking pool
//! (`spawn_blocking`), maps it there, and runs the operators after it, fused, over the
//! results: one hop per chunk, not per event. While a chunk is away the stage takes no
//! more input, so a slow step slows the sources.

use std::fmt;
use std::sync::Arc;

use super::async_step::stage_per_output;
use super::compile::{Compiler, DispatchSpec, Output, Plan, settled};
use super::logic::{Identity, Logic};
use super::plan::StageHead;
use crate::error::{Result, StageError};
use crate::stage::{ConsumerContext, DEFAULT_MAX_DEMAND, ProducerConsumer};

/// The plan node of [`Flow::map_blocking`](super::Flow::map_blocking).
pub struct MapBlockingNode<P, F> {
    pub(crate) inner: P,
    pub(crate) f: Arc<F>,
}

impl<P, F> fmt::Debug for MapBlockingNode<P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("map_blocking")
    }
}

impl<P, F> StageHead for MapBlockingNode<P, F> where MapBlockingNode<P, F>: Plan {}

impl<P, F, U> Plan for MapBlockingNode<P, F>
where
    P: Plan,
    U: Send + 'static,
    F: Fn(P::Item) -> U + Send + Sync + 'static,
{
    type Item = U;

    fn compile<'a, L>(
        self,
        compiler: &mut Compiler<'a>,
        logic: L,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        Self: 'a,
        L: Logic<In = U> + Clone + 'a,
    {
        let upstream = self
            .inner
            .compile(compiler, Identity::new(), &DispatchSpec::demand())?;
        let f = self.f;
        stage_per_output(
            compiler,
            "map_blocking",
            "map_blocking".into(),
            upstream,
            logic,
            dispatch,
            DEFAULT_MAX_DEMAND,
            |logic| BlockingStage {
                f: f.clone(),
                _in: std::marker::PhantomData,
                logic,
                out_hint: 0,
            },
        )
    }
}

struct BlockingStage<A, F, L> {
    f: Arc<F>,
    _in: std::marker::PhantomData<fn(A)>,
    logic: L,
    out_hint: usize,
}

impl<A, F, L> ProducerConsumer for BlockingStage<A, F, L>
where
    A: Send + 'static,
    F: Fn(A) -> L::In + Send + Sync + 'static,
    L: Logic,
{
    type In = A;
    type Out = L::Out;

    async fn handle_events(
        &mut self,
        events: Vec<A>,
        _context: &mut ConsumerContext,
    ) -> std::result::Result<Vec<L::Out>, StageError> {
        let f = self.f.clone();
        let mapped: Vec<L::In> =
            crate::sink::off_workers(move || events.into_iter().map(|event| f(event)).collect())
                .await?;
        let mut out = Vec::with_capacity(self.out_hint.max(mapped.len()));
        self.logic.feed(mapped.into_iter(), &mut out);
        self.out_hint = out.len();
        settled(&mut self.logic, out).await
    }

    async fn handle_done(&mut self) -> std::result::Result<Vec<L::Out>, StageError> {
        let mut out = Vec::new();
        self.logic.done(&mut out);
        settled(&mut self.logic, out).await
    }
}
