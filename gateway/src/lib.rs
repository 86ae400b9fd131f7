//! The Wenxiao terminal gateway: TLS device sessions as actors, deduplicated durable
//! ingest into PostgreSQL or SQLite with the subsidy, points and budget rules, the daily
//! clearing and settlement files, exactly-once credit loading, and the hot list and fraud
//! rules.

pub mod admin;
pub mod audit;
pub mod budget;
pub mod clearing;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod credits;
pub mod events;
pub mod hotlist;
pub mod httpapi;
pub mod ingest;
pub mod metrics;
pub mod observe;
pub mod outbound;
pub mod pki;
pub mod points;
pub mod policy;
pub mod registry;
pub mod risk;
pub mod rules;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
pub mod tls_conn;
pub mod validate;

pub use wenxiao_protocol as protocol;
