//! The city simulator: a city model and the seeded plan of a day (`plan`), emulated cards
//! (`card`) and devices (`device`) that speak the device protocol over real mTLS, the
//! terminals' hot list (`hotlist`), the fraud a scenario plants and its scoring against
//! the gateway's cases (`fraud`), and the run that drives them against a gateway
//! (`world`).

pub mod bench;
pub mod card;
pub mod check;
pub mod cli;
pub mod console;
pub mod demo;
pub mod device;
pub mod drive;
pub mod fraud;
pub mod hotlist;
pub mod http;
pub mod plan;
pub mod plot;
pub mod report;
pub mod run;
pub mod scenario;
pub mod world;

pub use wenxiao_protocol as protocol;
