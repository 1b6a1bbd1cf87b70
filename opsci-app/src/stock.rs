//! Stock movements and their fold per product.

use serde::{Deserialize, Serialize};
use stream_core::serdes::{Json, Utf8, I64};
use stream_core::{
    Consumed, Grouped, Materialized, Produced, StreamsBuilder, Topology, TopologyError,
};

/// Direction of a stock movement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Direction {
    /// Goods in: the stock grows.
    In,
    /// Goods out: the stock shrinks.
    Out,
}

/// A stock movement, as the course's producers write it:
/// `{"id":201,"amount":37,"type":"OUT"}`, keyed by the product id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movement {
    /// The product id.
    pub id: u64,
    /// How many units move.
    pub amount: i64,
    /// In or out.
    #[serde(rename = "type")]
    pub direction: Direction,
}

impl Movement {
    /// The signed change of stock.
    pub fn delta(&self) -> i64 {
        match self.direction {
            Direction::In => self.amount,
            Direction::Out => -self.amount,
        }
    }
}

/// Name of the store holding the stock per product.
pub const STOCK_STORE: &str = "stock";

/// Folds movements of `stock_topic` into a stock level per product (store
/// [`STOCK_STORE`]) and writes each new level to `levels_topic`.
pub fn stock_levels(stock_topic: &str, levels_topic: &str) -> Result<Topology, TopologyError> {
    let builder = StreamsBuilder::new();
    builder
        .stream(stock_topic, Consumed::with(Utf8, Json::<Movement>::new()))
        .group_by_key(Grouped::with(Utf8, Json::new()))
        .aggregate(
            || 0,
            |_, m: Movement, stock| stock + m.delta(),
            Materialized::new(STOCK_STORE, I64),
        )
        .to_stream()
        .to(levels_topic, Produced::with(Utf8, I64));
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stream_core::TestDriver;

    #[test]
    fn reads_the_course_format() {
        let m: Movement = serde_json::from_str(r#"{"id":201,"amount":37,"type":"OUT"}"#).unwrap();
        assert_eq!(
            m,
            Movement {
                id: 201,
                amount: 37,
                direction: Direction::Out
            }
        );
        assert_eq!(m.delta(), -37);
        assert!(
            serde_json::from_str::<Movement>(r#"{"id":1,"amount":1,"type":"SIDEWAYS"}"#).is_err()
        );
    }

    #[test]
    fn folds_in_and_out_per_product() -> stream_core::Result<()> {
        let driver = TestDriver::builder(stock_levels("stock", "levels")?)
            .partitions(3)
            .build()?;
        let input = driver.input_topic("stock", Utf8, Json::<Movement>::new());
        for (id, amount, direction) in [
            (1, 10, Direction::In),
            (2, 5, Direction::In),
            (1, 4, Direction::Out),
        ] {
            input.pipe(
                id.to_string(),
                Movement {
                    id,
                    amount,
                    direction,
                },
            )?;
        }
        let store = driver.store(STOCK_STORE, Utf8, I64);
        assert_eq!(store.get(&"1".to_string())?, Some(6));
        assert_eq!(store.get(&"2".to_string())?, Some(5));
        Ok(())
    }
}
