//! Portcullis, an API gateway.
//!
//! Configuration flows one way: YAML → `config` (parse into the model) → `compile` (each
//! module builds its own section, with file:line errors) → `snapshot` (attach the state carried
//! across reloads) → `gateway` (atomic swap). Requests run through `pipeline` on the snapshot
//! they started with.

pub mod admin;
pub mod auth;
pub mod body;
pub mod cache;
pub mod compile;
pub mod config;
pub mod connection;
pub mod consumer;
pub mod control;
pub mod edge;
pub mod forwarded;
pub mod gateway;
pub mod grpc;
pub mod held;
pub mod http_rules;
pub mod observe;
pub mod outbound;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod read_through;
pub mod redis_store;
pub mod reject;
pub mod request_id;
pub mod route;
pub mod router;
pub mod server;
pub mod shadow;
pub mod snapshot;
pub mod tenant;
pub mod tls;
pub mod upstream;
pub mod websocket;
