//! Shared helpers for the end-to-end tests, one module per harness: the test upstream, the
//! gateway under test (in-process or as a process), clients, and the real servers the tests
//! start themselves (Redis, PostgreSQL) or stand in for (identity provider, introspection,
//! OTLP collector). Every harness that needs a Debian package panics when it is missing —
//! `scripts/test` installs them — so a test never silently skips what it checks.
#![allow(dead_code, unused_imports)]

mod certs;
mod client;
mod gateway;
mod idp;
mod origin;
mod postgres;
mod redis;
mod service;
mod store;
mod upstream;

pub use certs::*;
pub use client::*;
pub use gateway::*;
pub use idp::*;
pub use origin::*;
pub use postgres::*;
pub use redis::*;
pub use service::*;
pub use store::*;
pub use upstream::*;

/// Taken first by every test of a binary whose tests measure latency, so none of them runs
/// beside another (`cargo test` runs one binary at a time; within one, tests run in parallel).
pub static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
