//! Shared helpers of the cross-crate integration tests in `tests/tests/`.
