//! Windows: how a reducing stage splits its events in time.
//!
//! For now the only window is [`Window::global`]: one window per stage, closed when all the
//! stage's producers are done. Event-time, processing-time, count, sliding and session
//! windows, and their triggers, live here too as they arrive.

/// A window kind for the reduce family of a layer.
///
/// ```
/// use flowstage::flow::Partition;
/// use flowstage::window::Window;
/// let options = Partition::new().stages(2).window(Window::global());
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Window {
    /// One window; fires `Done` when all the stage's producers finish.
    #[default]
    Global,
}

impl Window {
    /// The global window (the default).
    pub fn global() -> Self {
        Window::Global
    }

    /// The kind's name, as triggers report it.
    pub fn kind(&self) -> &'static str {
        match self {
            Window::Global => "global",
        }
    }
}
