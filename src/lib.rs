//! Portcullis, an API gateway.
//!
//! Configuration flows one way: YAML → `config` (parse, validate) → `snapshot` (compile) →
//! `gateway` (atomic swap). Requests run through `pipeline` on the snapshot they started with.

pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
pub mod control;
pub mod forwarded;
pub mod gateway;
pub mod grpc;
pub mod held;
pub mod observe;
pub mod outbound;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod reject;
pub mod request_id;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod websocket;
