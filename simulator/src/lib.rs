//! The city simulator. Device emulation and the city model arrive with the simulator issue.

pub use wenxiao_protocol as protocol;
