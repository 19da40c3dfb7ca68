//! A source made of user producers from the stage layer.

use super::{BoxedProducer, Source};
use crate::error::{FlowError, Result};
use crate::stage::Producer;

/// User producers, one stage each; see [`Flow::from_stages`](crate::flow::Flow::from_stages).
#[derive(Debug)]
pub struct StagesSource<P>(pub(crate) Vec<P>);

impl<P: Producer + 'static> Source for StagesSource<P> {
    type Item = P::Item;

    fn into_producers(self) -> Result<Vec<BoxedProducer<P::Item>>> {
        if self.0.is_empty() {
            return Err(FlowError::Config(
                "from_stages needs at least one producer".into(),
            ));
        }
        Ok(self.0.into_iter().map(BoxedProducer::new).collect())
    }
}
