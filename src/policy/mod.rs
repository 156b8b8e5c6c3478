//! Per-route policies. Each builds its compiled form from its config section once per
//! snapshot and then offers a cheap per-request check or transform.

pub mod compression;
pub mod cors;
pub mod direct_response;
pub mod fault;
pub mod header_ops;
pub mod json_schema;
pub mod json_shape;
pub mod redirect;
pub mod request_rules;
pub mod rewrite;
pub mod template;
pub mod vary;
