//! The JSON diff of tap compare on generated documents: it reports a path
//! exactly where the documents differ, the same paths either way round, at
//! most `limit` of them, and a reported path, used as an ignore pattern,
//! silences exactly that difference.

use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use weft::layer::mirror::json_diff::{diff, JsonPath};

use super::cases;

/// Object keys: plain ones, ones that need `['…']`, and digits and dots.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["a", "b", "id", "0", "a.b", "odd key", "", "it's", "é", "x-y"])
            .prop_map(str::to_string),
        "[a-z0-9 ._'-]{0,4}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..3).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![0.0, -0.0, 1.0, 1.5, 1e300, -2.5e-8])
            .prop_map(|f| Value::Number(Number::from_f64(f).unwrap())),
        // 2^53 and its neighbours, where integers and doubles part.
        prop::sample::select(vec![
            9_007_199_254_740_992u64,
            9_007_199_254_740_993,
            9_007_199_254_740_994
        ])
        .prop_map(Value::from),
    ]
}

fn document() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        "[a-c]{0,2}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..4)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Two documents that often share most of their structure: the second is
/// the first with some values replaced, or with every integer one higher.
fn pair() -> impl Strategy<Value = (Value, Value)> {
    prop_oneof![
        (document(), document()),
        document().prop_map(|a| {
            let b = bump(&a);
            (a, b)
        }),
        (
            document(),
            prop::collection::vec((any::<prop::sample::Index>(), document()), 1..3)
        )
            .prop_map(|(a, edits)| {
                let mut b = a.clone();
                for (at, value) in edits {
                    replace_nth(&mut b, at.index(count(&a)), value);
                }
                (a, b)
            }),
    ]
}

/// `v` with each integer one higher (one lower at the top of the range).
fn bump(v: &Value) -> Value {
    match v {
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Value::from(u.checked_add(1).unwrap_or(u64::MAX - 1)),
            (None, Some(i)) => Value::from(i + 1),
            _ => v.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(bump).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), bump(v))).collect()),
        _ => v.clone(),
    }
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(items) => items.iter().map(count).sum(),
        Value::Object(map) => map.values().map(count).sum(),
        _ => 0,
    }
}

/// Replaces the `n`th value in depth-first order (0 is `v` itself).
fn replace_nth(v: &mut Value, n: usize, with: Value) {
    if n == 0 {
        *v = with;
        return;
    }
    let children: Vec<&mut Value> = match v {
        Value::Array(items) => items.iter_mut().collect(),
        Value::Object(map) => map.values_mut().collect(),
        _ => return,
    };
    let mut before = 1;
    for child in children {
        let size = count(child);
        if n < before + size {
            return replace_nth(child, n - before, with);
        }
        before += size;
    }
}

/// Equality as the diff documents it: numbers by value, integers exactly.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(x), Some(y), ..) => x == y,
            (.., Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64() && (x.is_f64() || y.is_f64()),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn differences_are_found_exactly_where_documents_differ((a, b) in pair()) {
        let (all, truncated) = diff(&a, &b, &[], usize::MAX);
        prop_assert!(!truncated);
        prop_assert_eq!(all.is_empty(), same(&a, &b), "{:?}", all);
        prop_assert!(diff(&a, &a, &[], usize::MAX).0.is_empty());

        let (back, _) = diff(&b, &a, &[], usize::MAX);
        let swapped: Vec<_> = back.iter().map(|d| (d.path.clone(), d.shadow.clone(), d.primary.clone())).collect();
        let forward: Vec<_> = all.iter().map(|d| (d.path.clone(), d.primary.clone(), d.shadow.clone())).collect();
        prop_assert_eq!(forward, swapped);

        for limit in [0, 1, 2] {
            let (some, truncated) = diff(&a, &b, &[], limit);
            prop_assert_eq!(&some[..], &all[..all.len().min(limit)]);
            prop_assert_eq!(truncated, all.len() > limit);
        }

        prop_assert!(diff(&a, &b, &[JsonPath::parse("$").unwrap()], usize::MAX).0.is_empty());
        for d in &all {
            let pattern = JsonPath::parse(&d.path);
            prop_assert!(pattern.is_ok(), "reported path {} is no valid ignore pattern: {:?}", d.path, pattern);
            let (rest, _) = diff(&a, &b, &[pattern.unwrap()], usize::MAX);
            let expected: Vec<_> = all.iter().filter(|o| o.path != d.path).cloned().collect();
            prop_assert_eq!(rest, expected, "ignoring {}", d.path);
        }
    }

    #[test]
    fn any_ignore_pattern_parses_or_is_refused(text in r"\$?([.\[\]*'0-9a-z-]|\x22){0,12}") {
        if let Ok(pattern) = JsonPath::parse(&text) {
            let doc = serde_json::json!({"a": [1, {"b": 2}], "c": {"d": 3}});
            let _ = diff(&doc, &serde_json::json!([]), &[pattern], 10);
        }
    }
}

/// 64-bit ids differ past 2^53, where doubles no longer tell integers apart
/// (they compared equal).
#[test]
fn integers_past_two_to_the_53_differ() {
    let (a, b) = (
        serde_json::json!({"id": 9_007_199_254_740_993u64}),
        serde_json::json!({"id": 9_007_199_254_740_992u64}),
    );
    assert_eq!(diff(&a, &b, &[], 10).0.len(), 1);
    let (a, b) = (serde_json::json!([1]), serde_json::json!([1.0]));
    assert!(diff(&a, &b, &[], 10).0.is_empty());
}
