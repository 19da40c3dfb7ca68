//! Test support for the loom models in `tests/loom.rs`; compiled only with
//! `--cfg flowstage_loom`, not part of the API.
//!
//! The demand state machines are crate-private; these thin wrappers expose exactly the
//! operations the runtime uses, delegating to the real [`Inflow`](demand::Inflow) and
//! [`Credit`](demand::Credit), so the models check the code that runs.

use crate::stage::DemandMode;
use crate::stage::demand;

/// The consumer's side of one subscription (`stage::demand::Inflow`).
#[derive(Debug, Clone)]
pub struct Inflow(demand::Inflow);

impl Inflow {
    /// A subscription with `max_demand`, `min_demand` and demand mode.
    pub fn new(max: usize, min: usize, mode: DemandMode) -> Self {
        Inflow(demand::Inflow::new(max, min, mode))
    }

    /// The first ask, on subscribe.
    pub fn initial_ask(&mut self) -> usize {
        self.0.initial_ask()
    }

    /// The largest chunk handed to the stage at once.
    pub fn chunk_size(&self) -> usize {
        self.0.chunk_size()
    }

    /// `n` events were handled; returns how many to ask for now.
    pub fn handled(&mut self, n: usize) -> usize {
        self.0.handled(n)
    }

    /// A manual ask of `n`.
    pub fn asked(&mut self, n: usize) {
        self.0.asked(n)
    }
}

/// The producer's credit towards one subscriber (`stage::demand::Credit`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Credit(demand::Credit);

/// The right to send up to `len()` events (`stage::demand::Permit`).
#[derive(Debug)]
pub struct Permit(demand::Permit);

impl Credit {
    /// Demand of `n` more arrived.
    pub fn grant(&mut self, n: usize) {
        self.0.grant(n)
    }

    /// Credit left.
    pub fn available(&self) -> usize {
        self.0.available()
    }

    /// Takes up to `n` events' worth of credit.
    pub fn take(&mut self, n: usize) -> Permit {
        Permit(self.0.take(n))
    }
}

impl Permit {
    /// How many events this permit allows.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it allows none.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}
