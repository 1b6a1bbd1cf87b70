//! The OPSCI retail app, composed from stream-core.
//!
//! Status: the CSV loaders produce to Kafka; the stock fold, the status
//! policy, rejections and status events run on stream-core's test driver; the
//! Kafka runtime (`run`, `status`) and the Strapi sync are not built yet.

pub mod model;
pub mod policy;
pub mod sources;
pub mod topology;
