//! Trace-context parsing (W3C `traceparent`/`tracestate`, B3 single and
//! multi) on arbitrary headers: after injection the request carries exactly
//! one `traceparent` that parses back to weft's ids; never a panic.
#![no_main]

use arbitrary::Arbitrary;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use weft::telemetry::propagation::{extract, inject, parse_b3_single, parse_traceparent, Format, Outgoing};

const NAMES: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

#[derive(Arbitrary, Debug)]
struct Input {
    raw: Vec<u8>,
    headers: Vec<(u8, Vec<u8>)>,
    trace_id: u128,
    span_id: u64,
    parent_span_id: Option<u64>,
    sampled: bool,
}

fuzz_target!(|input: Input| {
    if let Some((trace, span, _)) = parse_traceparent(&input.raw) {
        assert!(trace != 0 && span != 0);
    }
    if let Some(parent) = parse_b3_single(&input.raw).and_then(|b3| b3.parent) {
        assert!(parent.0 != 0 && parent.1 != 0);
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(NAMES[usize::from(*name) % NAMES.len()]), value);
        }
    }
    let incoming = extract(&headers);
    let out = Outgoing {
        trace_id: input.trace_id.max(1),
        span_id: input.span_id.max(1),
        parent_span_id: input.parent_span_id,
        sampled: input.sampled,
    };
    inject(&mut headers, &incoming, &out);
    assert_eq!(headers.get_all("traceparent").iter().count(), 1);
    let sent = extract(&headers);
    assert_eq!(sent.format, Format::W3c);
    assert_eq!(sent.parent, Some((out.trace_id, out.span_id)));
});
