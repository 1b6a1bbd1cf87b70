//! Stateless operators: a function per record, and branching.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::error::Result;
use crate::processor::{Data, Processor, ProcessorContext};
use crate::record::Record;

/// A processor made of a function of (record, context).
pub(crate) struct FnProcessor<KIn, VIn, KOut, VOut, F> {
    f: Arc<F>,
    _types: PhantomData<fn(KIn, VIn) -> (KOut, VOut)>,
}

impl<KIn, VIn, KOut, VOut, F> FnProcessor<KIn, VIn, KOut, VOut, F> {
    pub(crate) fn new(f: Arc<F>) -> Self {
        FnProcessor { f, _types: PhantomData }
    }
}

impl<KIn: Data, VIn: Data, KOut: Data, VOut: Data, F> Processor for FnProcessor<KIn, VIn, KOut, VOut, F>
where
    F: Fn(Record<KIn, VIn>, &mut ProcessorContext<'_, KOut, VOut>) -> Result<()> + Send + Sync + 'static,
{
    type KIn = KIn;
    type VIn = VIn;
    type KOut = KOut;
    type VOut = VOut;

    fn process(&mut self, ctx: &mut ProcessorContext<'_, KOut, VOut>, record: Record<KIn, VIn>) -> Result<()> {
        (self.f)(record, ctx)
    }
}

/// A branch predicate.
pub(crate) type Predicate<K, V> = Arc<dyn Fn(&K, &V) -> bool + Send + Sync>;

/// Sends each record to the child of the first predicate that holds.
pub(crate) struct BranchProcessor<K, V> {
    predicates: Arc<Vec<Predicate<K, V>>>,
}

impl<K, V> BranchProcessor<K, V> {
    pub(crate) fn new(predicates: Arc<Vec<Predicate<K, V>>>) -> Self {
        BranchProcessor { predicates }
    }
}

impl<K: Data, V: Data> Processor for BranchProcessor<K, V> {
    type KIn = K;
    type VIn = V;
    type KOut = K;
    type VOut = V;

    fn process(&mut self, ctx: &mut ProcessorContext<'_, K, V>, record: Record<K, V>) -> Result<()> {
        match self.predicates.iter().position(|p| p(&record.key, &record.value)) {
            Some(branch) => ctx.forward_to(branch, record),
            None => Ok(()),
        }
    }
}
