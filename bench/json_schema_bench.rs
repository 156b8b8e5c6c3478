//! JSON Schema validation cost: a ~1 KiB body against a 20-property schema, parse and
//! validate together (what a request pays), as the p50 of single calls.
//! `cargo run --release --example json_schema_bench [CALLS]`.
//! Wall-clock on a shared machine (±15%); the target is p50 ≤ 5 µs.

use bytes::Bytes;
use portcullis::config::{Diag, Located};
use portcullis::policy::json_schema::JsonSchema;
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let calls: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    // 20 properties of the usual kinds: strings with lengths and patterns, bounded numbers,
    // enums, an array of strings, a nested object; all required, nothing else allowed.
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for i in 0..20 {
        let name = format!("field_{i:02}");
        let p = match i % 5 {
            0 => serde_json::json!({ "type": "string", "minLength": 1, "maxLength": 128 }),
            1 => serde_json::json!({ "type": "integer", "minimum": 0, "maximum": 1000000 }),
            2 => serde_json::json!({ "type": "string", "pattern": "^[a-z0-9-]+$" }),
            3 => {
                serde_json::json!({ "type": "array", "items": { "type": "string" }, "maxItems": 8 })
            }
            _ => serde_json::json!({ "enum": ["draft", "active", "archived"] }),
        };
        properties.insert(name.clone(), p);
        required.push(name);
    }
    let schema = serde_json::json!({
        "type": "object",
        "required": required,
        "additionalProperties": false,
        "properties": properties,
    });
    let mut diag = Diag::new("bench.yaml");
    let s = JsonSchema::build(
        &Located::new(schema, 1),
        None,
        std::path::Path::new("."),
        "routes[0]",
        &mut diag,
    )
    .expect("the schema compiles");
    let mut doc = serde_json::Map::new();
    for i in 0..20 {
        let v = match i % 5 {
            0 => serde_json::json!(format!(
                "A readable value number {i}, padded out to a length that a real field has, or so"
            )),
            1 => serde_json::json!(123456 + i),
            2 => serde_json::json!(format!("slug-value-{i}-abcdefgh-ijkl-mnopqrst")),
            3 => serde_json::json!([
                "alpha",
                "beta",
                "gamma",
                "delta",
                "epsilon",
                "zeta",
                "eta-theta"
            ]),
            _ => serde_json::json!("active"),
        };
        doc.insert(format!("field_{i:02}"), v);
    }
    let body = Bytes::from(serde_json::to_vec(&doc).unwrap());
    assert!(
        (1000..=1100).contains(&body.len()),
        "about 1 KiB: {}",
        body.len()
    );
    assert!(s.check(Some(&body)).is_ok());
    for _ in 0..calls / 10 {
        black_box(s.check(black_box(Some(&body))).is_ok());
    }
    let mut ns: Vec<u64> = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        black_box(s.check(black_box(Some(&body))).is_ok());
        ns.push(t.elapsed().as_nanos() as u64);
    }
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "json_schema: body {} bytes, 20 properties, {calls} calls: p50 {:.2} µs, p90 {:.2} µs, p99 {:.2} µs",
        body.len(),
        at(0.5),
        at(0.9),
        at(0.99)
    );
}
