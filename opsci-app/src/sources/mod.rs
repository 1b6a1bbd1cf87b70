//! Loading CSV files onto the OPSCI topics.
//!
//! [`csv`] turns the course's CSV formats into topic records, one result per
//! row; [`produce`] sends them with a murmur2-partitioning producer, sends
//! the rows that do not parse to the error topic (with file, line and
//! reason) and reports a [`Summary`].

pub mod csv;
mod producer;

pub use self::csv::{parse, Kind, Row, RowError};
pub use crate::kafka::KafkaConfig;
pub use producer::{produce, ProduceError, Summary};
