//! The fraud rules, evaluated on every stored transaction off the ack path, and what
//! they feed: alerts grouped into cases.

pub mod api;
pub mod config;
pub mod engine;
pub mod worker;
