//! The Wenxiao terminal gateway. Its device sessions, store and clearing arrive with the
//! gateway issue; for now the crate only re-exports the protocol it speaks.

pub use wenxiao_protocol as protocol;
