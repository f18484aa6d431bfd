//! Trace-context parsing on arbitrary headers: whatever a client sends, the
//! request that goes upstream carries exactly one valid `traceparent` with
//! weft's span, and B3 senders get B3 headers naming weft's span back.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use weft::telemetry::propagation::{
    extract, inject, parse_b3_single, parse_traceparent, traceparent, Format, Incoming, Outgoing,
};

use super::cases;

const TRACE_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-b3-other",
    "x-app",
];

/// `digits` lowercase hex digits; one time in ten, one of them replaced by
/// a byte that is not one (uppercase, a dash, a letter past f).
fn hex(digits: usize) -> impl Strategy<Value = String> {
    let valid = prop::collection::vec(prop::sample::select(b"0123456789abcdef".to_vec()), digits..=digits);
    let bad = (any::<prop::sample::Index>(), prop::sample::select(b"AF-g ".to_vec()));
    (valid, prop::option::weighted(0.1, bad)).prop_map(|(mut d, bad)| {
        if let Some((at, byte)) = bad {
            let at = at.index(d.len());
            d[at] = byte;
        }
        String::from_utf8(d).unwrap()
    })
}

/// Values shaped like trace headers (right lengths, mostly hex, sometimes
/// one byte off), and arbitrary bytes.
fn value() -> impl Strategy<Value = Vec<u8>> {
    // The versions and ids the spec singles out: 00, a later one, the
    // forbidden ff; all-zero ids.
    let version = prop_oneof![
        prop::sample::select(vec!["00", "01", "ff"]).prop_map(str::to_string),
        hex(2)
    ];
    let zeros = |n: usize| "0".repeat(n);
    let trace = prop_oneof![4 => hex(32), 1 => Just(zeros(32))];
    let span = prop_oneof![4 => hex(16), 1 => Just(zeros(16))];
    let traceparent = (version, trace, span, hex(2), prop::option::of("-[ -~]{0,3}"))
        .prop_map(|(v, t, s, f, tail)| format!("{v}-{t}-{s}-{f}{}", tail.unwrap_or_default()));
    let b3 = (
        prop_oneof![hex(32), hex(16), hex(8)],
        hex(16),
        prop::option::of("[01d]"),
        prop::option::of(hex(16)),
    )
        .prop_map(|(t, s, sampled, parent)| {
            let mut v = format!("{t}-{s}");
            if let Some(sampled) = sampled {
                v.push('-');
                v.push_str(&sampled);
                if let Some(p) = parent {
                    v.push('-');
                    v.push_str(&p);
                }
            }
            v
        });
    prop_oneof![
        traceparent.prop_map(String::into_bytes),
        b3.prop_map(String::into_bytes),
        prop_oneof![
            hex(16),
            hex(32),
            Just("1".into()),
            Just("0".into()),
            Just("d".into()),
            Just("true".into())
        ]
        .prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..70),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((prop::sample::select(TRACE_HEADERS), value()), 0..6).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                map.append(HeaderName::from_static(name), value);
            }
        }
        map
    })
}

fn outgoing() -> impl Strategy<Value = Outgoing> {
    (
        1..=u128::MAX,
        1..=u64::MAX,
        prop::option::of(1..=u64::MAX),
        any::<bool>(),
    )
        .prop_map(|(trace_id, span_id, parent_span_id, sampled)| Outgoing {
            trace_id,
            span_id,
            parent_span_id,
            sampled,
        })
}

fn ids_are_set(incoming: &Incoming) -> bool {
    incoming.parent.is_none_or(|(trace, span)| trace != 0 && span != 0)
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn any_traceparent_parses_to_non_zero_ids_or_none(value in value()) {
        if let Some((trace, span, _)) = parse_traceparent(&value) {
            prop_assert!(trace != 0 && span != 0);
            // Version 00 is exactly 55 bytes of lowercase hex and dashes.
            if value.starts_with(b"00") {
                prop_assert_eq!(value.len(), 55);
            }
            prop_assert!(!value.starts_with(b"ff"));
        }
        if let Some(incoming) = parse_b3_single(&value) {
            prop_assert!(ids_are_set(&incoming));
        }
    }

    #[test]
    fn what_goes_upstream_carries_weft_span(mut headers in headers(), out in outgoing()) {
        let incoming = extract(&headers);
        prop_assert!(ids_are_set(&incoming));
        let had_tracestate = headers.contains_key("tracestate");
        inject(&mut headers, &incoming, &out);

        prop_assert_eq!(headers.get_all("traceparent").iter().count(), 1);
        let sent = extract(&headers);
        prop_assert_eq!(sent.format, Format::W3c);
        prop_assert_eq!(sent.parent, Some((out.trace_id, out.span_id)));
        prop_assert_eq!(sent.sampled, Some(out.sampled));
        prop_assert_eq!(&headers["traceparent"], &traceparent(&out));
        let keeps_tracestate = matches!(incoming.format, Format::W3c | Format::Absent);
        prop_assert_eq!(headers.contains_key("tracestate"), had_tracestate && keeps_tracestate);

        match incoming.format {
            Format::B3Single => {
                let b3 = parse_b3_single(headers["b3"].as_bytes());
                prop_assert_eq!(b3.and_then(|b| b.parent), Some((out.trace_id, out.span_id)));
            }
            Format::B3Multi => {
                let hex = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_string());
                prop_assert_eq!(hex("x-b3-traceid"), Some(format!("{:032x}", out.trace_id)));
                prop_assert_eq!(hex("x-b3-spanid"), Some(format!("{:016x}", out.span_id)));
                prop_assert_eq!(hex("x-b3-parentspanid"), out.parent_span_id.map(|p| format!("{p:016x}")));
                prop_assert_eq!(hex("x-b3-sampled"), Some(if out.sampled { "1" } else { "0" }.to_string()));
            }
            Format::Absent | Format::None | Format::W3c => {}
        }
    }
}
