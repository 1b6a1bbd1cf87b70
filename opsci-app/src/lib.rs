//! The OPSCI retail app, composed from stream-core.
//!
//! - [`sources`]: the CSV loaders (`opsci-app produce`);
//! - [`topology`]: validation, the stock fold, the status [`policy`],
//!   rejections, status events and the catalogue topic, on the [`model`]'s
//!   records;
//! - [`strapi`]: keeping a real Strapi in sync with the catalogue and events;
//! - [`app`]: `opsci-app run` (the topology on stream-core's exactly-once
//!   runtime, the Strapi sync, the [`http`] endpoint and its [`metrics`]);
//! - [`demo`]: the default command, the whole pipeline on embedded defaults;
//! - [`kafka`]: client settings and topic creation shared by all of them.

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
