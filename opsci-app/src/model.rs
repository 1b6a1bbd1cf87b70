//! The records of the OPSCI topics, in the course's formats.

use serde::{Deserialize, Serialize};

/// A product of the catalogue, keyed by its id on the product topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// The product id (the record key).
    pub id: u64,
    /// Display name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The stock the product starts with; also the reference for the
    /// `danger` threshold.
    #[serde(default)]
    pub stock_available: i64,
    /// Barcode.
    #[serde(default)]
    pub barcode: String,
}

/// Direction of a stock movement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Direction {
    /// Goods in: the stock grows.
    In,
    /// Goods out: the stock shrinks.
    Out,
}

/// A validated stock movement; on the topic: `{"id":201,"amount":37,"type":"OUT"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movement {
    /// The product id.
    pub id: u64,
    /// How many units move (positive).
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

/// A product's stock status, as the Strapi `status` enumeration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Enough stock.
    Safe,
    /// Under the danger threshold.
    Danger,
    /// Nothing left.
    Empty,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Safe => "safe",
            Status::Danger => "danger",
            Status::Empty => "empty",
        })
    }
}

/// A product as the catalogue shows it: its details with its current stock
/// and status. The app writes one to the catalogue topic, keyed by product
/// id, whenever either changes; the Strapi sync makes Strapi's product match
/// the latest one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductState {
    /// The product, as last loaded (its `stock_available` is the reference stock).
    pub product: Product,
    /// The current stock.
    pub stock: i64,
    /// The status of the current stock.
    pub status: Status,
}

/// An event of the event topic (Strapi's `event` type): a readable sentence
/// and JSON metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The sentence.
    pub value: String,
    /// Structured details.
    pub metadata: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_course_formats() {
        let m: Movement = serde_json::from_str(r#"{"id":201,"amount":37,"type":"OUT"}"#).unwrap();
        assert_eq!(m, Movement { id: 201, amount: 37, direction: Direction::Out });
        assert_eq!(m.delta(), -37);
        let p: Product = serde_json::from_str(r#"{"id":1,"name":"Pear","stock_available":12}"#).unwrap();
        assert_eq!((p.name.as_str(), p.stock_available, p.barcode.as_str()), ("Pear", 12, ""));
        assert_eq!(serde_json::to_string(&Status::Danger).unwrap(), r#""danger""#);
    }
}
