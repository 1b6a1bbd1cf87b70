//! The OPSCI topology on stream-core.
//!
//! ```text
//! product ──► table `products` (upsert by id) ──► product-state ───────────────► catalogue
//!                      ┆ (read by fold-stock)
//! stock ──► parse-movements ──┬─► (malformed) ─────────────────────────────────► error
//!                             └─► repartition by product id ─► fold-stock ─┬─► (rejected) ─► error
//!                                                                          ├─► (applied) ─► catalogue
//!                                                                          └─► (status changed) ─► event
//! ```
//!
//! The fold starts each product from its `stock_available`, adds `IN`,
//! subtracts `OUT`, and rejects an `OUT` that would take the stock below zero;
//! every rejection reaches the error topic with the movement, its source
//! topic, partition and offset, and the reason.
//!
//! The catalogue topic (compacted, keyed by product id) receives the
//! [`ProductState`] of a product whenever it is loaded or its stock changes;
//! the Strapi sync ([`crate::strapi`]) keeps Strapi equal to its latest
//! values.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stream_core::processor::{Processor, ProcessorContext, StoreHandle};
use stream_core::serdes::{Bytes, Json, Utf8, I64};
use stream_core::{Consumed, Produced, Record, Repartitioned, StreamsBuilder, Topology, TopologyError};

use crate::metrics::AppMetrics;
use crate::model::{Direction, Event, Movement, Product, ProductState, Status};
use crate::policy::StatusPolicy;

/// Topic names (the course's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Products, keyed by id.
    pub product: String,
    /// Events.
    pub event: String,
    /// Stock movements.
    pub stock: String,
    /// Rejected records, with their reason.
    pub error: String,
    /// The latest [`ProductState`] of each product (compacted).
    pub catalogue: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            product: "product".into(),
            event: "event".into(),
            stock: "stock".into(),
            error: "error".into(),
            catalogue: "catalogue".into(),
        }
    }
}

/// Store of the product table, by product id.
pub const PRODUCTS_STORE: &str = "products";
/// Store of the current stock, by product id.
pub const STOCK_STORE: &str = "stock";

/// Where a record was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: i64,
}

/// Why a record was sent to the error topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    /// The value is not a JSON object.
    MalformedJson {
        /// The parser's message.
        detail: String,
    },
    /// `id` is missing or not a non-negative integer.
    BadId {
        /// What was found.
        detail: String,
    },
    /// `amount` is missing or not a positive integer.
    BadAmount {
        /// What was found.
        detail: String,
    },
    /// `type` is missing or neither `IN` nor `OUT`.
    BadType {
        /// What was found.
        detail: String,
    },
    /// No product has this id.
    UnknownProduct {
        /// The id.
        id: u64,
    },
    /// An `OUT` larger than the stock.
    InsufficientStock {
        /// Units asked for.
        requested: i64,
        /// Units in stock.
        available: i64,
    },
    /// An event that is not `{"value": "...", "metadata": ...}`.
    MalformedEvent {
        /// The parser's message.
        detail: String,
    },
    /// Strapi refused the product or event (a client error; retrying cannot help).
    StrapiRejected {
        /// The request and Strapi's message.
        detail: String,
    },
}

impl Reason {
    /// The `code` of each reason, in declaration order.
    pub const CODES: [&'static str; 8] = [
        "malformed_json",
        "bad_id",
        "bad_amount",
        "bad_type",
        "unknown_product",
        "insufficient_stock",
        "malformed_event",
        "strapi_rejected",
    ];

    /// The position of this reason's code in [`Reason::CODES`].
    pub fn index(&self) -> usize {
        match self {
            Reason::MalformedJson { .. } => 0,
            Reason::BadId { .. } => 1,
            Reason::BadAmount { .. } => 2,
            Reason::BadType { .. } => 3,
            Reason::UnknownProduct { .. } => 4,
            Reason::InsufficientStock { .. } => 5,
            Reason::MalformedEvent { .. } => 6,
            Reason::StrapiRejected { .. } => 7,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::MalformedJson { detail } => write!(f, "malformed JSON: {detail}"),
            Reason::BadId { detail } => write!(f, "bad id: {detail}"),
            Reason::BadAmount { detail } => write!(f, "bad amount: {detail}"),
            Reason::BadType { detail } => write!(f, "bad type: {detail}"),
            Reason::UnknownProduct { id } => write!(f, "unknown product {id}"),
            Reason::InsufficientStock { requested, available } => {
                write!(f, "insufficient stock: OUT {requested} with {available} in stock")
            }
            Reason::MalformedEvent { detail } => write!(f, "malformed event: {detail}"),
            Reason::StrapiRejected { detail } => write!(f, "refused by Strapi: {detail}"),
        }
    }
}

/// A rejected record, as written to the error topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// The reason as a sentence.
    pub message: String,
    /// The record's value as text.
    pub record: String,
    /// Where it was read.
    pub source: Source,
}

impl Rejection {
    /// The rejection of `record`, read at `source`, for `reason`.
    pub fn new(reason: Reason, record: String, source: Source) -> Self {
        Rejection { message: reason.to_string(), reason, record, source }
    }
}

/// Checks a stock record: a JSON object with a non-negative integer `id`, a
/// positive integer `amount` and a `type` of `IN` or `OUT`.
pub fn parse_movement(bytes: &[u8]) -> Result<Movement, Reason> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Reason::MalformedJson { detail: e.to_string() })?;
    let object =
        value.as_object().ok_or_else(|| Reason::MalformedJson { detail: format!("not an object: {value}") })?;
    let field = |name: &str| object.get(name).map_or_else(|| "missing".to_string(), |v| v.to_string());
    let id = object.get("id").and_then(|v| v.as_u64()).ok_or_else(|| Reason::BadId { detail: field("id") })?;
    let amount =
        object.get("amount").and_then(|v| v.as_i64()).filter(|a| *a > 0).ok_or_else(|| Reason::BadAmount {
            detail: format!("{} (a positive integer is required)", field("amount")),
        })?;
    let direction = match object.get("type").and_then(|v| v.as_str()) {
        Some("IN") => Direction::In,
        Some("OUT") => Direction::Out,
        _ => return Err(Reason::BadType { detail: format!("{} (IN or OUT)", field("type")) }),
    };
    Ok(Movement { id, amount, direction })
}

/// A valid movement on its way to the fold, with its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The movement.
    pub movement: Movement,
    /// Where it was read.
    pub source: Source,
}

/// A movement applied to a product's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The product.
    pub product: Product,
    /// Stock before and after.
    pub old_stock: i64,
    /// Stock after.
    pub stock: i64,
    /// Status before.
    pub old_status: Status,
    /// Status after.
    pub status: Status,
}

/// What the fold did with a movement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied to the stock.
    Applied(Applied),
    /// Rejected, stock unchanged.
    Rejected(Rejection),
}

/// Parses raw stock records; keys valid ones by product id.
struct ParseMovements;

impl Processor for ParseMovements {
    type KIn = Vec<u8>;
    type VIn = Vec<u8>;
    type KOut = String;
    type VOut = Result<Envelope, Rejection>;

    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, Result<Envelope, Rejection>>,
        record: Record<Vec<u8>, Vec<u8>>,
    ) -> stream_core::Result<()> {
        let source = ctx
            .record_metadata()
            .map(|m| Source { topic: m.topic.to_string(), partition: m.partition, offset: m.offset })
            .ok_or_else(|| stream_core::StreamError::processing("movement without source"))?;
        let (key, parsed) = match parse_movement(&record.value) {
            Ok(movement) => (movement.id.to_string(), Ok(Envelope { movement, source })),
            Err(reason) => {
                let text = String::from_utf8_lossy(&record.value).into_owned();
                (String::from_utf8_lossy(&record.key).into_owned(), Err(Rejection::new(reason, text, source)))
            }
        };
        ctx.forward(record.with_key_value(key, parsed))
    }
}

/// Folds movements into each product's stock; never below zero.
struct StockFold {
    policy: StatusPolicy,
    products: Option<StoreHandle<String, Product>>,
    stock: Option<StoreHandle<String, i64>>,
}

impl StockFold {
    fn apply(
        &self,
        ctx: &mut ProcessorContext<'_, String, Outcome>,
        key: &String,
        envelope: Envelope,
    ) -> stream_core::Result<Outcome> {
        let (Some(products), Some(stock)) = (&self.products, &self.stock) else {
            return Err(stream_core::StreamError::processing("fold used before init"));
        };
        let Envelope { movement, source } = envelope;
        let record = serde_json::to_string(&movement).unwrap_or_default();
        let Some(product) = ctx.store(products).get(key)? else {
            return Ok(Outcome::Rejected(Rejection::new(Reason::UnknownProduct { id: movement.id }, record, source)));
        };
        let old_stock = ctx.store(stock).get(key)?.unwrap_or(product.stock_available);
        let new_stock = old_stock.checked_add(movement.delta()).filter(|s| *s >= 0);
        let Some(new_stock) = new_stock else {
            let reason = match movement.direction {
                Direction::Out => Reason::InsufficientStock { requested: movement.amount, available: old_stock },
                Direction::In => Reason::BadAmount { detail: format!("{} overflows the stock", movement.amount) },
            };
            return Ok(Outcome::Rejected(Rejection::new(reason, record, source)));
        };
        ctx.store(stock).put(key, &new_stock)?;
        let reference = product.stock_available;
        Ok(Outcome::Applied(Applied {
            old_status: self.policy.status(old_stock, reference),
            status: self.policy.status(new_stock, reference),
            old_stock,
            stock: new_stock,
            product,
        }))
    }
}

impl Processor for StockFold {
    type KIn = String;
    type VIn = Envelope;
    type KOut = String;
    type VOut = Outcome;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, Outcome>) -> stream_core::Result<()> {
        self.products = Some(ctx.store_handle(PRODUCTS_STORE, Utf8, Json::new())?);
        self.stock = Some(ctx.store_handle(STOCK_STORE, Utf8, I64)?);
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, Outcome>,
        record: Record<String, Envelope>,
    ) -> stream_core::Result<()> {
        let outcome = self.apply(ctx, &record.key, record.value.clone())?;
        ctx.forward(record.with_value(outcome))
    }
}

/// Turns a product (new or updated) into its catalogue state: the current
/// stock if movements were applied, else the product's `stock_available`.
struct ProductStates {
    policy: StatusPolicy,
    stock: Option<StoreHandle<String, i64>>,
}

impl Processor for ProductStates {
    type KIn = String;
    type VIn = Product;
    type KOut = String;
    type VOut = ProductState;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, ProductState>) -> stream_core::Result<()> {
        self.stock = Some(ctx.store_handle(STOCK_STORE, Utf8, I64)?);
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, ProductState>,
        record: Record<String, Product>,
    ) -> stream_core::Result<()> {
        let Some(handle) = &self.stock else {
            return Err(stream_core::StreamError::processing("product-state used before init"));
        };
        let stock = ctx.store(handle).get(&record.key)?.unwrap_or(record.value.stock_available);
        let status = self.policy.status(stock, record.value.stock_available);
        let state = ProductState { product: record.value.clone(), stock, status };
        ctx.forward(record.with_value(state))
    }
}

/// The catalogue as the stores hold it: each product of `products` with its
/// stock from `stock` (its `stock_available` when no movement was applied)
/// and status, by product id.
pub fn product_states(
    products: Vec<(String, Product)>,
    stock: Vec<(String, i64)>,
    policy: &StatusPolicy,
) -> Vec<ProductState> {
    let stock: std::collections::HashMap<String, i64> = stock.into_iter().collect();
    let mut states: Vec<ProductState> =
        products.into_iter().map(|(key, product)| product_state(product, stock.get(&key).copied(), policy)).collect();
    states.sort_by_key(|s| s.product.id);
    states
}

/// One product's state: its stock (the catalogue's until a movement is
/// applied) and the status the policy gives it.
pub fn product_state(product: Product, stock: Option<i64>, policy: &StatusPolicy) -> ProductState {
    let stock = stock.unwrap_or(product.stock_available);
    ProductState { status: policy.status(stock, product.stock_available), stock, product }
}

/// The event announcing a status change.
pub fn status_event(applied: &Applied) -> Event {
    let p = &applied.product;
    Event {
        value: format!(
            "{} (product {}) is now {}: {} in stock (was {})",
            p.name, p.id, applied.status, applied.stock, applied.old_status
        ),
        metadata: serde_json::json!({
            "product": p.id,
            "old_status": applied.old_status,
            "status": applied.status,
            "stock": applied.stock,
        }),
    }
}

/// Builds the OPSCI topology; it counts movements in `metrics`.
pub fn build(topics: &Topics, policy: StatusPolicy, metrics: Arc<AppMetrics>) -> Result<Topology, TopologyError> {
    let builder = StreamsBuilder::new();
    let catalogue = || Produced::with(Utf8, Json::<ProductState>::new());
    let products = builder.table(&topics.product, Consumed::with(Utf8, Json::<Product>::new()), PRODUCTS_STORE);
    builder.add_state_store(STOCK_STORE);
    products
        .to_stream()
        .process("product-state", &[STOCK_STORE], move || ProductStates { policy, stock: None })
        .to(&topics.catalogue, catalogue());
    let rejected = || Produced::with(Utf8, Json::<Rejection>::new());
    let parsed =
        builder.stream(&topics.stock, Consumed::with(Bytes, Bytes)).process("parse-movements", &[], || ParseMovements);
    let counted = metrics.clone();
    parsed
        .flat_map_values(|p: Result<Envelope, Rejection>| p.err())
        .peek(move |_, r| counted.movement_rejected(&r.reason))
        .to(&topics.error, rejected());
    let outcomes = parsed
        .flat_map_values(|p: Result<Envelope, Rejection>| p.ok())
        .repartition(Repartitioned::with(Utf8, Json::new()).named("stock-by-product"))
        .process("fold-stock", &[PRODUCTS_STORE, STOCK_STORE], move || StockFold {
            policy,
            products: None,
            stock: None,
        });
    let outcomes = outcomes.peek(move |_, o| match o {
        Outcome::Applied(_) => metrics.movement_applied(),
        Outcome::Rejected(r) => metrics.movement_rejected(&r.reason),
    });
    outcomes
        .flat_map_values(|o: Outcome| match o {
            Outcome::Rejected(r) => Some(r),
            Outcome::Applied(_) => None,
        })
        .to(&topics.error, rejected());
    outcomes
        .flat_map_values(|o: Outcome| match o {
            Outcome::Applied(a) => Some(ProductState { product: a.product, stock: a.stock, status: a.status }),
            Outcome::Rejected(_) => None,
        })
        .to(&topics.catalogue, catalogue());
    outcomes
        .flat_map_values(|o: Outcome| match o {
            Outcome::Applied(a) if a.status != a.old_status => Some(status_event(&a)),
            _ => None,
        })
        .to(&topics.event, Produced::with(Utf8, Json::new()));
    builder.build()
}
