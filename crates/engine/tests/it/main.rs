//! Engine integration tests, one binary.

mod scheduler_props;
