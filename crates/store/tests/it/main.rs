//! Store behaviour tests. `behaviour` holds backend-independent checks run per backend.

mod behaviour;
mod sqlite;
