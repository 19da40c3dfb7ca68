//! `uniq` / `uniq_by`: a per-stage, per-window seen-set.

use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use ahash::AHashSet;

use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::logic::{Logic, PartitionInfo};
use crate::error::Result;
use crate::window::{Slots, WindowSignal};

/// Passes an event only if its key was not seen before in this stage (and window).
pub(crate) struct UniqBy<A, K, F, L> {
    key: Arc<F>,
    seen: Slots<AHashSet<K>>,
    rest: L,
    _in: PhantomData<fn(A)>,
}

impl<A, K, F, L: Clone> Clone for UniqBy<A, K, F, L> {
    fn clone(&self) -> Self {
        UniqBy {
            key: self.key.clone(),
            seen: Slots::default(),
            rest: self.rest.clone(),
            _in: PhantomData,
        }
    }
}

impl<A, K, F, L> Logic for UniqBy<A, K, F, L>
where
    A: Send + 'static,
    K: Hash + Eq + Send + 'static,
    F: Fn(&A) -> K + Send + Sync,
    L: Logic<In = A>,
{
    type In = A;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.rest.start(partition);
    }

    #[inline]
    fn push(&mut self, event: A, out: &mut Vec<L::Out>) {
        if self.seen.current(AHashSet::new).insert((self.key)(&event)) {
            self.rest.push(event, out);
        }
    }

    #[inline]
    fn feed<It: Iterator<Item = A>>(&mut self, events: It, out: &mut Vec<L::Out>) {
        let (key, seen) = (&*self.key, self.seen.current(AHashSet::new));
        self.rest
            .feed(events.filter(|event| seen.insert(key(event))), out);
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        self.seen = Slots::default();
        self.rest.done(out);
    }

    fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<L::Out>) {
        match signal {
            WindowSignal::Enter(window) => self.seen.enter(window.id),
            WindowSignal::Fire(trigger) if trigger.is_done() => {
                self.seen.take(trigger.window.id);
            }
            _ => {}
        }
        self.rest.window(signal, out);
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push("uniq_by".to_string());
        self.rest.describe(names);
    }

    fn failure(&mut self) -> Option<crate::error::StageError> {
        self.rest.failure()
    }

    fn side_output(&mut self) -> Option<super::SideOutput> {
        self.rest.side_output()
    }

    fn routed(&mut self) -> Option<&mut Vec<Vec<Self::Out>>> {
        self.rest.routed()
    }

    fn has_reducer(&self) -> bool {
        self.rest.has_reducer()
    }
}

/// The plan node of `uniq_by`.
pub struct UniqNode<P, F> {
    pub(crate) inner: P,
    pub(crate) key: Arc<F>,
}

impl<P, F> std::fmt::Debug for UniqNode<P, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UniqNode")
    }
}

impl<P, K, F> Plan for UniqNode<P, F>
where
    P: Plan,
    K: Hash + Eq + Send + 'static,
    F: Fn(&P::Item) -> K + Send + Sync,
{
    type Item = P::Item;
    const REDUCES: bool = P::REDUCES;

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
        let (inner, uniq) = self.into_logic(logic);
        inner.compile(compiler, uniq, dispatch)
    }
}

impl<P: Plan, F> UniqNode<P, F> {
    /// The node's input and its logic before `rest`, for either backend.
    pub(crate) fn into_logic<K, L>(self, rest: L) -> (P, UniqBy<P::Item, K, F, L>) {
        let uniq = UniqBy {
            key: self.key,
            seen: Slots::default(),
            rest,
            _in: PhantomData,
        };
        (self.inner, uniq)
    }
}
