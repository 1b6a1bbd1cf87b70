//! Stream–table join: look the record's key up in the table's store.

use std::sync::Arc;

use crate::error::Result;
use crate::processor::{Data, Processor, ProcessorContext, StoreHandle};
use crate::record::Record;
use crate::serdes::SerdeRef;
use crate::task::node::ProcessorNode;
use crate::topology::table::KTable;
use crate::topology::NodeFactory;

/// Joins a stream value with the table value (absent for a key not in the
/// table); `None` drops the record (inner join).
pub(crate) type Joiner<V, VT, VR> = Arc<dyn Fn(&V, Option<&VT>) -> Option<VR> + Send + Sync>;

struct JoinProcessor<K, V, VT, VR> {
    store: String,
    keys: SerdeRef<K>,
    values: SerdeRef<VT>,
    joiner: Joiner<V, VT, VR>,
    table: Option<StoreHandle<K, VT>>,
}

impl<K: Data, V: Data, VT: Data, VR: Data> Processor for JoinProcessor<K, V, VT, VR> {
    type KIn = K;
    type VIn = V;
    type KOut = K;
    type VOut = VR;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, K, VR>) -> Result<()> {
        self.table = Some(ctx.store_handle(&self.store, self.keys.clone(), self.values.clone())?);
        Ok(())
    }

    fn process(&mut self, ctx: &mut ProcessorContext<'_, K, VR>, record: Record<K, V>) -> Result<()> {
        let Some(table) = &self.table else {
            return Ok(());
        };
        let current = ctx.store(table).get(&record.key)?;
        match (self.joiner)(&record.value, current.as_ref()) {
            Some(joined) => ctx.forward(record.with_value(joined)),
            None => Ok(()),
        }
    }
}

pub(crate) fn factory<K: Data, V: Data, VT: Data, VR: Data>(
    table: &KTable<K, VT>,
    joiner: Joiner<V, VT, VR>,
) -> NodeFactory {
    let (store, keys, values) = (table.store.clone(), table.keys.clone(), table.values.clone());
    Arc::new(move |_| {
        ProcessorNode::boxed(JoinProcessor {
            store: store.clone(),
            keys: keys.clone(),
            values: values.clone(),
            joiner: joiner.clone(),
            table: None,
        })
    })
}
