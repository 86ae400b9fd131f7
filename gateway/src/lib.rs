//! The Wenxiao terminal gateway: TLS device sessions as actors, deduplicated durable
//! ingest into PostgreSQL or SQLite, and (later) the subsidy rules and clearing.

pub mod cli;
pub mod config;
pub mod registry;
pub mod store;

pub use wenxiao_protocol as protocol;
