//! Engine integration tests, one binary.

mod layering;
mod scheduler_props;
