//! The OPSCI retail app, composed from stream-core.
//!
//! Status: the CSV loaders (`produce`) and the topology (`run`, on
//! stream-core's at-least-once runtime, or in process on its test driver):
//! validation, the stock fold, the status policy, rejections and status
//! events. Not built yet: exactly-once, `status`, the Strapi sync.

pub mod app;
pub mod demo;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod sources;
pub mod strapi;
pub mod topology;
