//! The OPSCI retail app, composed from stream-core.
//!
//! Status: the stock fold, the status policy, rejections and status events
//! run on stream-core's test driver; the loaders, the Kafka runtime and the
//! Strapi sync come with the app's own issue.

pub mod model;
pub mod policy;
pub mod topology;
