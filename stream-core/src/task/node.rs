//! Type erasure of processors, so that a task can hold a graph of processors
//! of different types and hand records between them without boxing them.

use std::any::Any;
use std::marker::PhantomData;

use super::TaskCore;
use crate::error::{Result, StreamError};
use crate::processor::{Processor, ProcessorContext, PunctuationType};
use crate::record::Record;

/// A node of a task's graph. Records travel as `&mut Option<Record<K, V>>`
/// seen as `&mut dyn Any`; the receiving node takes the record out.
pub(crate) trait Node: Send {
    fn set_children(&mut self, children: Vec<usize>);
    fn init(&mut self, core: &mut TaskCore, id: usize) -> Result<()>;
    fn process(&mut self, core: &mut TaskCore, id: usize, record: &mut dyn Any) -> Result<()>;
    fn punctuate(&mut self, core: &mut TaskCore, id: usize, kind: PunctuationType, timestamp: i64) -> Result<()>;
    fn close(&mut self);
}

/// A [`Processor`] as a [`Node`].
pub(crate) struct ProcessorNode<P> {
    processor: P,
    children: Vec<usize>,
}

impl<P: Processor> ProcessorNode<P> {
    pub(crate) fn boxed(processor: P) -> Box<dyn Node> {
        Box::new(ProcessorNode { processor, children: Vec::new() })
    }
}

macro_rules! context {
    ($self:ident, $core:ident, $id:ident) => {
        &mut ProcessorContext { core: $core, node: $id, children: &$self.children, _out: PhantomData }
    };
}

impl<P: Processor> Node for ProcessorNode<P> {
    fn set_children(&mut self, children: Vec<usize>) {
        self.children = children;
    }

    fn init(&mut self, core: &mut TaskCore, id: usize) -> Result<()> {
        self.processor.init(context!(self, core, id))
    }

    fn process(&mut self, core: &mut TaskCore, id: usize, record: &mut dyn Any) -> Result<()> {
        let record =
            record.downcast_mut::<Option<Record<P::KIn, P::VIn>>>().and_then(Option::take).ok_or_else(|| {
                StreamError::processing(format!("internal error: record of unexpected type at node {id}"))
            })?;
        self.processor.process(context!(self, core, id), record)
    }

    fn punctuate(&mut self, core: &mut TaskCore, id: usize, kind: PunctuationType, timestamp: i64) -> Result<()> {
        self.processor.punctuate(context!(self, core, id), kind, timestamp)
    }

    fn close(&mut self) {
        self.processor.close();
    }
}
