//! Trace context propagation: reading an incoming request's trace context and
//! writing weft's own into the request sent upstream.
//!
//! Formats, in order of preference:
//! - W3C Trace Context (`traceparent`, `tracestate`), Level 1,
//!   <https://www.w3.org/TR/trace-context/>. A `traceparent` is accepted only if
//!   it parses exactly as section 3.2 describes (lowercase hex, version not
//!   `ff`, exact length for version `00`, trace id and parent id not all zero);
//!   anything else is treated as absent, so it is never forwarded as is
//!   (section 3.2.2.3: "restart the trace"), and its `tracestate` is dropped
//!   with it (section 3.3.1: no `tracestate` without a valid `traceparent`).
//! - B3 (<https://github.com/openzipkin/b3-propagation>), read only when no
//!   `traceparent` was sent: the single `b3` header first, then the
//!   `x-b3-traceid`/`x-b3-spanid`/`x-b3-sampled`/`x-b3-flags` headers. A B3
//!   sender gets its B3 headers rewritten too, so a B3-only upstream sees weft's
//!   span as its parent as well.
//!
//! Guarantees: the request sent upstream carries exactly one `traceparent`,
//! version `00`, with the incoming trace id (or a new one) and weft's span id;
//! parsing and formatting never allocate except for the header values set.
//! Everything here is pure and unit-tested.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub static B3: HeaderName = HeaderName::from_static("b3");
pub static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Which header format the incoming context came in, so the upstream gets its
/// context back in the same format (plus `traceparent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// No trace header at all (not even `tracestate`).
    Absent,
    /// Trace headers that carry no usable context.
    None,
    W3c,
    B3Single,
    B3Multi,
}

/// What the downstream sent. `sampled` may be known without ids (B3 allows a
/// bare sampling decision such as `b3: 0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// (trace id, parent span id), both non-zero.
    pub parent: Option<(u128, u64)>,
    pub sampled: Option<bool>,
    pub format: Format,
}

impl Incoming {
    const NONE: Incoming = Incoming {
        parent: None,
        sampled: None,
        format: Format::None,
    };
    const ABSENT: Incoming = Incoming {
        format: Format::Absent,
        ..Incoming::NONE
    };
}

/// Whether `name` is one of the headers [`extract`] reads (or `inject` drops).
fn is_trace_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    name == "traceparent" || name == "tracestate" || name == "b3" || name.starts_with("x-b3-")
}

/// Reads the incoming trace context. An invalid `traceparent` counts as none
/// (and B3 is then not consulted: the caller meant W3C).
pub fn extract(headers: &HeaderMap) -> Incoming {
    // Most requests carry no trace header: one pass over the few names
    // present is cheaper than the six hashed lookups that would find none.
    if !headers.keys().any(is_trace_header) {
        return Incoming::ABSENT;
    }
    let mut traceparents = headers.get_all(&TRACEPARENT).iter();
    if let Some(first) = traceparents.next() {
        // Two traceparent headers cannot both be right; trust neither.
        if traceparents.next().is_some() {
            return Incoming::NONE;
        }
        return match parse_traceparent(first.as_bytes()) {
            Some((trace_id, span_id, flags)) => Incoming {
                parent: Some((trace_id, span_id)),
                sampled: Some(flags & 1 == 1),
                format: Format::W3c,
            },
            None => Incoming::NONE,
        };
    }
    if let Some(single) = headers.get(&B3) {
        return parse_b3_single(single.as_bytes()).unwrap_or(Incoming::NONE);
    }
    parse_b3_multi(headers)
}

/// Parses a `traceparent` value into (trace id, parent id, flags), per W3C
/// Trace Context section 3.2.
pub fn parse_traceparent(value: &[u8]) -> Option<(u128, u64, u8)> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_u8(&value[0..2])?;
    // Version 00 has exactly this length; a later version may append fields
    // after another '-' (section 3.2.4), which are ignored. ff is forbidden.
    match version {
        0xff => return None,
        0 if value.len() != 55 => return None,
        0 => {}
        _ if value.len() > 55 && value[55] != b'-' => return None,
        _ => {}
    }
    let trace_id = hex_u128(&value[3..35])?;
    let span_id = hex_u64(&value[36..52])?;
    let flags = hex_u8(&value[53..55])?;
    (trace_id != 0 && span_id != 0).then_some((trace_id, span_id, flags))
}

/// Parses the single `b3` header: `{traceid}-{spanid}[-{sampled}[-{parent}]]`
/// or a bare sampling decision (`0`, `1`, `d`).
pub fn parse_b3_single(value: &[u8]) -> Option<Incoming> {
    let mut parts = value.split(|b| *b == b'-');
    let first = parts.next()?;
    let Some(span) = parts.next() else {
        return Some(Incoming {
            parent: None,
            sampled: Some(b3_sampled(first)?),
            format: Format::B3Single,
        });
    };
    let trace_id = b3_trace_id(first)?;
    let span_id = (span.len() == 16).then(|| hex_u64(span)).flatten()?;
    let sampled = match parts.next() {
        Some(s) => Some(b3_sampled(s)?),
        None => None,
    };
    (trace_id != 0 && span_id != 0).then_some(Incoming {
        parent: Some((trace_id, span_id)),
        sampled,
        format: Format::B3Single,
    })
}

/// Reads the `x-b3-*` headers; ids that do not parse are ignored, a lone
/// sampling decision is kept.
pub fn parse_b3_multi(headers: &HeaderMap) -> Incoming {
    let trace_id = headers.get(&X_B3_TRACEID).and_then(|v| b3_trace_id(v.as_bytes()));
    let span_id = headers
        .get(&X_B3_SPANID)
        .map(HeaderValue::as_bytes)
        .filter(|v| v.len() == 16)
        .and_then(hex_u64);
    // x-b3-flags: 1 is "debug", which implies sampled.
    let debug = headers.get(&X_B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    let sampled = match headers.get(&X_B3_SAMPLED).map(HeaderValue::as_bytes) {
        _ if debug => Some(true),
        // Older senders write true/false.
        Some(b"1") | Some(b"true") => Some(true),
        Some(b"0") | Some(b"false") => Some(false),
        _ => None,
    };
    let parent = match (trace_id, span_id) {
        (Some(t), Some(s)) if t != 0 && s != 0 => Some((t, s)),
        _ => None,
    };
    if parent.is_none() && sampled.is_none() {
        return Incoming::NONE;
    }
    Incoming {
        parent,
        sampled,
        format: Format::B3Multi,
    }
}

fn b3_trace_id(value: &[u8]) -> Option<u128> {
    // 64-bit B3 trace ids are left-padded to 128 bits for W3C.
    match value.len() {
        16 => hex_u64(value).map(u128::from),
        32 => hex_u128(value),
        _ => None,
    }
}

fn b3_sampled(value: &[u8]) -> Option<bool> {
    match value {
        b"1" | b"d" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}

/// The context weft sends upstream for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub trace_id: u128,
    /// Weft's span: the upstream's parent.
    pub span_id: u64,
    /// The downstream's span, if any: weft's parent.
    pub parent_span_id: Option<u64>,
    pub sampled: bool,
}

/// Replaces the trace headers of a request about to go upstream. `tracestate`
/// survives only when it came with a valid `traceparent`.
pub fn inject(headers: &mut HeaderMap, incoming: &Incoming, out: &Outgoing) {
    headers.insert(TRACEPARENT.clone(), traceparent(out));
    if !matches!(incoming.format, Format::W3c | Format::Absent) {
        headers.remove(&TRACESTATE);
    }
    match incoming.format {
        Format::B3Single => {
            headers.insert(B3.clone(), b3_single(out));
        }
        Format::B3Multi => {
            headers.insert(X_B3_TRACEID.clone(), hex_value(&out.trace_id.to_be_bytes()));
            headers.insert(X_B3_SPANID.clone(), hex_value(&out.span_id.to_be_bytes()));
            match out.parent_span_id {
                Some(p) => headers.insert(X_B3_PARENTSPANID.clone(), hex_value(&p.to_be_bytes())),
                None => headers.remove(&X_B3_PARENTSPANID),
            };
            headers.insert(X_B3_SAMPLED.clone(), HeaderValue::from_static(sampled_str(out.sampled)));
        }
        Format::Absent | Format::None | Format::W3c => {}
    }
}

fn sampled_str(sampled: bool) -> &'static str {
    if sampled {
        "1"
    } else {
        "0"
    }
}

/// `00-{trace id}-{span id}-{flags}`, formatted on the stack.
pub fn traceparent(out: &Outgoing) -> HeaderValue {
    let mut text = [b'-'; 55];
    text[0..2].copy_from_slice(b"00");
    write_hex(&out.trace_id.to_be_bytes(), &mut text[3..35]);
    write_hex(&out.span_id.to_be_bytes(), &mut text[36..52]);
    text[53..55].copy_from_slice(if out.sampled { b"01" } else { b"00" });
    header_value(&text)
}

fn b3_single(out: &Outgoing) -> HeaderValue {
    // trace(32) - span(16) - sampled(1) [- parent(16)]
    let mut text = [b'-'; 32 + 1 + 16 + 1 + 1 + 1 + 16];
    write_hex(&out.trace_id.to_be_bytes(), &mut text[0..32]);
    write_hex(&out.span_id.to_be_bytes(), &mut text[33..49]);
    text[50] = if out.sampled { b'1' } else { b'0' };
    let len = match out.parent_span_id {
        Some(p) => {
            write_hex(&p.to_be_bytes(), &mut text[52..68]);
            68
        }
        None => 51,
    };
    header_value(&text[..len])
}

fn header_value(text: &[u8]) -> HeaderValue {
    // Only hex digits and '-' are ever written, which are valid header bytes.
    let mut value = HeaderValue::from_bytes(text).unwrap_or_else(|_| HeaderValue::from_static("0"));
    // Every value written here holds a new span id, so it never repeats:
    // sent as "never indexed", HTTP/2's HPACK encoder does not add it to its
    // table, where each one evicted an entry and made the search for the
    // next longer (callgrind, h2c both ways: about 2,400 fewer instructions
    // per request together with `x-request-id`). The value is the same.
    value.set_sensitive(true);
    value
}

fn hex_value(bytes: &[u8]) -> HeaderValue {
    let mut text = [0u8; 32];
    let len = bytes.len() * 2;
    write_hex(bytes, &mut text[..len]);
    header_value(&text[..len])
}

/// A trace id as 32 lowercase hex digits, without allocating.
#[derive(Clone, Copy)]
pub struct TraceIdText([u8; 32]);

impl TraceIdText {
    pub fn new(trace_id: u128) -> Self {
        let mut text = [b'0'; 32];
        write_hex(&trace_id.to_be_bytes(), &mut text);
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        // Always ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

/// Lowercase hex only: W3C forbids uppercase, and B3 ids are lowercase too.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_u128(text: &[u8]) -> Option<u128> {
    text.iter()
        .try_fold(0u128, |acc, b| Some(acc << 4 | u128::from(hex_digit(*b)?)))
}

fn hex_u64(text: &[u8]) -> Option<u64> {
    text.iter()
        .try_fold(0u64, |acc, b| Some(acc << 4 | u64::from(hex_digit(*b)?)))
}

fn hex_u8(text: &[u8]) -> Option<u8> {
    text.iter().try_fold(0u8, |acc, b| Some(acc << 4 | hex_digit(*b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;
    const SPAN: u64 = 0x00f067aa0ba902b7;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn parses_the_spec_example() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse_traceparent(tp), Some((TRACE, SPAN, 1)));
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(parse_traceparent(unsampled), Some((TRACE, SPAN, 0)));
    }

    #[test]
    fn rejects_invalid_traceparents() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn accepts_future_versions_with_extra_fields() {
        let tp = b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        assert_eq!(parse_traceparent(tp), Some((TRACE, SPAN, 1)));
        let tp = b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse_traceparent(tp), Some((TRACE, SPAN, 1)));
    }

    #[test]
    fn no_trace_header_is_absent_and_a_lone_tracestate_is_dropped() {
        let plain = headers(&[("accept", "*/*"), ("x-b3", "not b3"), ("x-b3-other", "?")]);
        assert_eq!(extract(&headers(&[("accept", "*/*")])), Incoming::ABSENT);
        // An unknown x-b3-* name is read as B3 (and found empty), not skipped.
        assert_eq!(extract(&plain).format, Format::None);
        let mut lone = headers(&[("tracestate", "vendor=1")]);
        let incoming = extract(&lone);
        assert_eq!(incoming, Incoming::NONE);
        let out = Outgoing {
            trace_id: TRACE,
            span_id: SPAN,
            parent_span_id: None,
            sampled: false,
        };
        inject(&mut lone, &incoming, &out);
        assert!(lone.get("tracestate").is_none());
        assert!(lone.get("traceparent").is_some());
    }

    #[test]
    fn extract_prefers_traceparent_and_ignores_b3_when_it_is_invalid() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
        let got = extract(&headers(&[("traceparent", tp), ("b3", b3)]));
        assert_eq!(got.parent, Some((TRACE, SPAN)));
        assert_eq!(got.format, Format::W3c);
        let got = extract(&headers(&[("traceparent", "garbage"), ("b3", b3)]));
        assert_eq!(got, Incoming::NONE);
        let got = extract(&headers(&[("traceparent", tp), ("traceparent", tp)]));
        assert_eq!(got, Incoming::NONE);
    }

    #[test]
    fn reads_b3_single() {
        let got = extract(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]));
        assert_eq!(
            got.parent,
            Some((0x80f198ee56343ba864fe8b2a57d3eff7, 0xe457b5a2e4d86bd1))
        );
        assert_eq!(got.sampled, Some(true));
        assert_eq!(got.format, Format::B3Single);
        let short = extract(&headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")]));
        assert_eq!(short.parent, Some((0xa3ce929d0e0e4736, SPAN)));
        assert_eq!(short.sampled, None);
        let deny = extract(&headers(&[("b3", "0")]));
        assert_eq!((deny.parent, deny.sampled), (None, Some(false)));
        let debug = extract(&headers(&[("b3", "d")]));
        assert_eq!(debug.sampled, Some(true));
        assert_eq!(extract(&headers(&[("b3", "xyz-00f067aa0ba902b7")])), Incoming::NONE);
    }

    #[test]
    fn reads_b3_multi() {
        let got = extract(&headers(&[
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "1"),
        ]));
        assert_eq!(got.parent, Some((TRACE, SPAN)));
        assert_eq!(got.sampled, Some(true));
        assert_eq!(got.format, Format::B3Multi);
        let debug = extract(&headers(&[("x-b3-flags", "1")]));
        assert_eq!((debug.parent, debug.sampled), (None, Some(true)));
        let bad_span = extract(&headers(&[
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa"),
        ]));
        assert_eq!(bad_span, Incoming::NONE);
    }

    #[test]
    fn formats_traceparent_and_trace_id() {
        let out = Outgoing {
            trace_id: TRACE,
            span_id: SPAN,
            parent_span_id: None,
            sampled: true,
        };
        assert_eq!(
            traceparent(&out),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let tp = traceparent(&Outgoing { sampled: false, ..out });
        assert_eq!(parse_traceparent(tp.as_bytes()), Some((TRACE, SPAN, 0)));
        assert_eq!(TraceIdText::new(1).as_str(), "00000000000000000000000000000001");
    }

    #[test]
    fn inject_replaces_context_and_keeps_tracestate_only_for_w3c() {
        let out = Outgoing {
            trace_id: TRACE,
            span_id: 0x1111111111111111,
            parent_span_id: Some(SPAN),
            sampled: true,
        };
        let mut h = headers(&[("traceparent", "bogus"), ("tracestate", "a=b")]);
        inject(&mut h, &Incoming::NONE, &out);
        assert_eq!(
            h.get("traceparent").unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"
        );
        assert!(h.get("tracestate").is_none());
        // A new span id per request: never worth a place in HPACK's table.
        assert!(h.get("traceparent").unwrap().is_sensitive());

        let mut h = headers(&[("tracestate", "a=b,c=d")]);
        let w3c = Incoming {
            parent: Some((TRACE, SPAN)),
            sampled: Some(true),
            format: Format::W3c,
        };
        inject(&mut h, &w3c, &out);
        assert_eq!(h.get("tracestate").unwrap(), "a=b,c=d");

        let mut h = HeaderMap::new();
        inject(
            &mut h,
            &Incoming {
                format: Format::B3Single,
                ..w3c
            },
            &out,
        );
        assert_eq!(
            h.get("b3").unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-1-00f067aa0ba902b7"
        );
        let mut h = HeaderMap::new();
        inject(
            &mut h,
            &Incoming {
                format: Format::B3Multi,
                ..w3c
            },
            &out,
        );
        assert_eq!(h.get("x-b3-traceid").unwrap(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h.get("x-b3-spanid").unwrap(), "1111111111111111");
        assert_eq!(h.get("x-b3-parentspanid").unwrap(), "00f067aa0ba902b7");
        assert_eq!(h.get("x-b3-sampled").unwrap(), "1");
    }
}
