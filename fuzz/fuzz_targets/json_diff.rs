//! The JSON diff of tap compare on arbitrary documents and ignore patterns:
//! at most `limit` differences, none between a document and itself, the
//! same paths either way round; never a panic.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use weft::layer::mirror::json_diff::{diff, JsonPath};

/// A document at most `depth` containers deep (bodies are parsed with
/// serde_json, which stops at 128).
fn document(u: &mut Unstructured, depth: u32) -> arbitrary::Result<Value> {
    let kind = if depth == 0 {
        u.int_in_range(0..=3)?
    } else {
        u.int_in_range(0..=5)?
    };
    Ok(match kind {
        0 => Value::Null,
        1 => Value::Bool(bool::arbitrary(u)?),
        2 => match u.int_in_range(0..=2)? {
            0 => Value::from(i64::arbitrary(u)?),
            1 => Value::from(u64::arbitrary(u)?),
            _ => Value::from(f64::arbitrary(u)?),
        },
        3 => Value::String(String::arbitrary(u)?),
        4 => {
            let len = u.int_in_range(0..=4)?;
            Value::Array((0..len).map(|_| document(u, depth - 1)).collect::<Result<_, _>>()?)
        }
        _ => {
            let len = u.int_in_range(0..=4)?;
            let mut map = Map::new();
            for _ in 0..len {
                map.insert(String::arbitrary(u)?, document(u, depth - 1)?);
            }
            Value::Object(map)
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(a), Ok(b), Ok(patterns), Ok(limit)) = (
        document(&mut u, 6),
        document(&mut u, 6),
        Vec::<String>::arbitrary(&mut u),
        u.int_in_range(0..=8usize),
    ) else {
        return;
    };
    let ignore: Vec<JsonPath> = patterns.iter().filter_map(|p| JsonPath::parse(p).ok()).collect();
    let (found, truncated) = diff(&a, &b, &ignore, limit);
    assert!(found.len() <= limit);
    let (all, _) = diff(&a, &b, &ignore, usize::MAX);
    assert_eq!(found[..], all[..found.len()]);
    assert_eq!(truncated, all.len() > limit);
    let (back, _) = diff(&b, &a, &ignore, usize::MAX);
    assert_eq!(
        all.iter().map(|d| &d.path).collect::<Vec<_>>(),
        back.iter().map(|d| &d.path).collect::<Vec<_>>()
    );
    assert!(diff(&a, &a, &ignore, usize::MAX).0.is_empty());
});
