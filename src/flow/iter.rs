//! Iterators as a flow's source: [`Flow::from_iter`](super::Flow::from_iter) and
//! [`Flow::from_iters`](super::Flow::from_iters).
//!
//! Each stage of the source's layer runs the stateless chain after it. With as many
//! iterators as stages, each stage owns one and feeds it straight into its chain; with
//! fewer (one iterator, and a stage per core by default), the stages share them, each
//! taking a batch at a time under a lock — so the chain runs in parallel however the
//! input arrives. The iterators may borrow: a blocking terminal (`collect`, `sum`, ...)
//! returns only after the flow ended.

use std::sync::{Arc, Mutex};

use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::fused::{OwnIter, SharedIter};
use super::logic::Logic;
use super::plan::SourceShape;
use super::{Flow, SourceNode};
use crate::error::{FlowError, Result};

/// Iterators as a flow's source; see [`Flow::from_iter`](super::Flow::from_iter).
#[derive(Debug)]
pub struct IterNode<I> {
    pub(crate) iters: Vec<I>,
    pub(crate) label: &'static str,
    pub(crate) stages: Option<usize>,
}

impl<I> Plan for IterNode<I>
where
    I: Iterator + Send,
    I::Item: Send + 'static,
{
    type Item = I::Item;

    fn compile<'a, L>(
        self,
        compiler: &mut Compiler<'a>,
        logic: L,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        Self: 'a,
        L: Logic<In = Self::Item> + Clone + 'a,
    {
        if self.iters.is_empty() {
            return Err(FlowError::Config(format!(
                "{} needs at least one iterator",
                self.label
            )));
        }
        let shape = SourceShape::new(self.iters.len(), self.stages, &logic)?;
        if !shape.shared {
            return Ok(shape.build(compiler, self.label, self.iters, |iter| {
                (OwnIter::new(iter), logic.clone(), dispatch, None)
            }));
        }
        let shared: Vec<_> = self
            .iters
            .into_iter()
            .map(|iter| Arc::new(Mutex::new(iter.fuse())))
            .collect();
        Ok(
            shape.build_shared(compiler, self.label, "iterator", &shared, |shared| {
                (
                    SharedIter::new(shared.clone()),
                    logic.clone(),
                    dispatch,
                    None,
                )
            }),
        )
    }
}

impl<I> Flow<IterNode<I>> {
    /// The number of stages the source's layer runs on: the stages that run the
    /// stateless chain after it (`map`, `filter`, ...) and, without a `partition`, the
    /// terminal's per-stage part (`sum`, `collect`, ...). Default: one per core. With
    /// fewer iterators than stages the stages share them; with one stage the chain runs
    /// where the iterator is read, in its order.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let flow = |stages| Flow::from_iter(0..1000u64).stages(stages).map(|x| x * 2);
    /// assert_eq!(flow(4).explain()?.stages(), 4); // 4 mappers, sharing the iterator
    /// // One stage keeps the iterator's order.
    /// let doubled: Vec<u64> = flow(1).collect()?;
    /// assert!(doubled.windows(2).all(|w| w[0] < w[1]));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn stages(mut self, stages: usize) -> Self {
        self.plan.stages = Some(stages);
        self
    }
}

impl<S> Flow<SourceNode<S>> {
    /// The number of stages the source's layer runs on (see [`Flow::stages`] of an
    /// iterator flow): with fewer producers than stages (one stream, one channel), the
    /// stages share them, one asking at a time, and each runs the chain after the source.
    /// Default: one per core.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let squares = Flow::from_stream(futures::stream::iter(0..100u64))
    ///     .stages(2)
    ///     .map(|x| x * x);
    /// let text = squares.explain()?.to_string();
    /// assert!(text.contains("shared by 2 stages"), "{text}");
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn stages(mut self, stages: usize) -> Self {
        self.plan.stages = Some(stages);
        self
    }
}

#[cfg(feature = "timely")]
mod cluster {
    use super::IterNode;
    use crate::cluster::{ClusterCompiler, ClusterPlan, ClusterStream, Stamp};
    use crate::error::Result;
    use crate::flow::plan::SourceNode;
    use crate::flow::{Logic, Plan};
    use crate::source::{IterSource, ItersSource};

    /// On the cluster, iterators are shared out by worker as their `Source`s are: one
    /// iterator by element, several by iterator.
    impl<I> ClusterPlan for IterNode<I>
    where
        I: Iterator + Send + 'static,
        I::Item: Send + 'static,
    {
        fn timely<'s, L>(
            mut self,
            compiler: &mut ClusterCompiler<'s>,
            logic: L,
            stamp: Stamp<L::Out>,
        ) -> Result<ClusterStream<'s, L::Out>>
        where
            L: Logic<In = <Self as Plan>::Item> + Clone + 'static,
        {
            if self.label == "from_iter" && self.iters.len() == 1 {
                if let Some(iter) = self.iters.pop() {
                    return SourceNode {
                        source: IterSource(iter),
                        label: self.label,
                        stages: self.stages,
                    }
                    .timely(compiler, logic, stamp);
                }
            }
            SourceNode {
                source: ItersSource(self.iters),
                label: self.label,
                stages: self.stages,
            }
            .timely(compiler, logic, stamp)
        }
    }
}
