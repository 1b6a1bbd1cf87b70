//! The OPSCI retail app, composed from stream-core.
//!
//! Status: skeleton. It holds the stock movement as the course's producers
//! write it and a first stock fold; validation, product statuses, the Strapi
//! sync and the Kafka runtime come with the app's own issue.

pub mod stock;
