//! The windows a cluster layer runs: the global window, and fixed event-time windows
//! closed by timely's frontier.

use std::sync::Arc;

use super::plan::{Stamp, unsupported};
use crate::error::Result;
use crate::window::{Kind, LateEvents, Window};

/// A layer's window, as the cluster runs it.
pub(crate) enum LayerWindowSpec<T> {
    /// One window; `Done` when the whole input has arrived everywhere.
    Global,
    /// Fixed event-time windows of `size` ms.
    Fixed {
        size: i64,
        timestamp: Arc<dyn Fn(&T) -> i64 + Send + Sync>,
        late: Option<LateEvents<T>>,
    },
}

impl<T: Send + 'static> LayerWindowSpec<T> {
    /// The cluster's form of `window`, or `Unsupported` for what it does not run.
    pub(crate) fn new(window: Option<Window<T>>, label: &str) -> Result<Self> {
        let Some(window) = window else {
            return Ok(LayerWindowSpec::Global);
        };
        window.validate()?;
        let kind = window.kind_name();
        if !window.triggers.is_empty() {
            return unsupported(format!(
                "{label} with triggers (a {kind} window with every/periodically/custom/message \
                 triggers)"
            ));
        }
        if window.lateness.is_some() {
            return unsupported(format!("{label} with allowed_lateness"));
        }
        if window.idle_timeout.is_some() {
            return unsupported(format!("{label} with idle_timeout"));
        }
        match window.kind {
            Kind::Global => Ok(LayerWindowSpec::Global),
            Kind::Fixed { size, ts, .. } => Ok(LayerWindowSpec::Fixed {
                size,
                timestamp: ts,
                late: window.late,
            }),
            _ => unsupported(format!("{label} with a {kind} window")),
        }
    }

    /// The window id (start, ms) of `event`, for a fixed window.
    #[inline]
    pub(crate) fn window_of(&self, event: &T) -> i64 {
        match self {
            LayerWindowSpec::Global => 0,
            LayerWindowSpec::Fixed {
                size, timestamp, ..
            } => crate::window::bounds::fixed(timestamp(event), *size).0,
        }
    }

    pub(crate) fn is_windowed(&self) -> bool {
        matches!(self, LayerWindowSpec::Fixed { .. })
    }

    /// How events into this layer are timestamped upstream.
    pub(crate) fn stamp(&self) -> Stamp<T> {
        match self {
            LayerWindowSpec::Global => None,
            LayerWindowSpec::Fixed {
                size, timestamp, ..
            } => {
                let (size, timestamp) = (*size, timestamp.clone());
                Some(Arc::new(move |event: &T| {
                    encode(crate::window::bounds::fixed(timestamp(event), size).0)
                }))
            }
        }
    }

    pub(crate) fn late(&self, event: T) {
        if let LayerWindowSpec::Fixed {
            late: Some(late), ..
        } = self
        {
            late.push(event);
        }
    }
}

/// A window id as the first half of a timely timestamp: the order-preserving map of
/// `i64` onto `u64`.
#[inline]
pub(crate) fn encode(id: i64) -> u64 {
    (id as u64) ^ (1 << 63)
}
