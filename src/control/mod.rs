//! The control plane: a versioned config store (SQLite by default, PostgreSQL for fleets), the
//! operator's commands on it, canary rollouts with automatic rollback, and the agent a gateway
//! runs to follow the store with a last-known-good copy on local disk.

pub mod agent;
pub mod canary;
pub mod checks;
pub mod commands;
pub mod rollout;
pub mod stats;
pub mod store;
