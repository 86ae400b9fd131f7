//! The city simulator. So far: the city model and the seeded plan of a day's activity
//! (`plan`); device emulation, the demo and the load harness build on it.

pub mod plan;

pub use wenxiao_protocol as protocol;
