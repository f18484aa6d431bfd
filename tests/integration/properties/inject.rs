//! `weft inject` on generated manifests: any text is parsed or refused with
//! a message, never a panic; injecting twice changes nothing the first time
//! did not, and uninjecting gives back the manifest as it was.

use proptest::prelude::*;
use serde_yaml_ng::{Mapping, Value};
use weft::inject::input;
use weft::inject::walk::{process, Mode};

use super::cases;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-2i64..70000).prop_map(Value::from),
        "[a-z0-9./-]{0,8}".prop_map(Value::String),
    ]
}

fn container(name: &'static str) -> impl Strategy<Value = Value> {
    (
        scalar(),
        prop::option::of(prop::collection::vec((1i64..70000).prop_map(Value::from), 0..3)),
    )
        .prop_map(move |(image, ports)| {
            let mut c = Mapping::new();
            c.insert("name".into(), name.into());
            c.insert("image".into(), image);
            if let Some(ports) = ports {
                let ports = ports
                    .into_iter()
                    .map(|p| Value::Mapping([("containerPort".into(), p)].into_iter().collect()));
                c.insert("ports".into(), Value::Sequence(ports.collect()));
            }
            Value::Mapping(c)
        })
}

/// Annotations weft reads, with values that are valid, invalid or odd.
fn annotations() -> impl Strategy<Value = Option<Value>> {
    let key = prop::sample::select(vec![
        "weft.io/inject",
        "weft.io/image",
        "weft.io/inbound-port",
        "weft.io/skip-outbound-ports",
        "weft.io/native-sidecar",
        "other/thing",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec!["enabled", "disabled", "15006", "0", "80,443", "1-2", "true", "x"])
            .prop_map(|v| Value::String(v.into())),
        scalar(),
    ];
    prop::option::of(
        prop::collection::vec((key, value), 0..3)
            .prop_map(|pairs| Value::Mapping(pairs.into_iter().map(|(k, v)| (Value::String(k.into()), v)).collect())),
    )
}

/// A pod spec with app containers, maybe init containers, volumes and
/// host networking.
fn pod_spec() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(container("app"), 0..3),
        prop::option::of(prop::collection::vec(container("setup"), 0..2)),
        prop::option::of(any::<bool>()),
        prop::option::of(prop_oneof![Just(Value::Sequence(vec![])), Just(Value::Null)]),
    )
        .prop_map(|(containers, init, host_network, volumes)| {
            let mut spec = Mapping::new();
            spec.insert("containers".into(), Value::Sequence(containers));
            if let Some(init) = init {
                spec.insert("initContainers".into(), Value::Sequence(init));
            }
            if let Some(host) = host_network {
                spec.insert("hostNetwork".into(), Value::Bool(host));
            }
            if let Some(volumes) = volumes {
                spec.insert("volumes".into(), volumes);
            }
            Value::Mapping(spec)
        })
}

/// A Pod or a Deployment (its template), or an object weft passes through.
fn manifest() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["Pod", "Deployment", "Service"]),
        annotations(),
        pod_spec(),
    )
        .prop_map(|(kind, annotations, spec)| {
            let mut metadata = Mapping::new();
            metadata.insert("name".into(), "web".into());
            if let Some(a) = annotations {
                metadata.insert("annotations".into(), a);
            }
            let mut doc = Mapping::new();
            doc.insert("kind".into(), kind.into());
            doc.insert("metadata".into(), Value::Mapping(metadata.clone()));
            if kind == "Deployment" {
                let template: Mapping = [("metadata".into(), Value::Mapping(metadata)), ("spec".into(), spec)]
                    .into_iter()
                    .collect();
                let spec: Mapping = [("template".into(), Value::Mapping(template))].into_iter().collect();
                doc.insert("spec".into(), Value::Mapping(spec));
            } else {
                doc.insert("spec".into(), spec);
            }
            Value::Mapping(doc)
        })
}

fn run(doc: &mut Value, mode: &Mode) -> Vec<String> {
    let mut report = Vec::new();
    process(doc, mode, &mut report);
    report
}

/// Keys present but null (`metadata:`, `volumes:` with nothing after) that
/// injection fills are null again after uninjecting, not gone (found by the
/// `inject` fuzz target, its input first).
#[test]
fn null_keys_that_injection_fills_are_null_again_after_uninject() {
    let inputs = [
        "apiVersion: v1\nkind: Pod\nmetadata:\n\nspec:\n  containers:\n    - na\n",
        "kind: Pod\nmetadata:\nspec:\n  initContainers:\n  volumes:\n  containers: [ { name: app, image: app } ]\n",
    ];
    for text in inputs {
        let original = input::parse("stdin", text).unwrap().documents.remove(0);
        let mut once = original.clone();
        run(&mut once, &Mode::Inject(Box::default()));
        assert_ne!(once, original, "{text}: not injected");
        let mut undone = once;
        run(&mut undone, &Mode::Uninject);
        assert_eq!(undone, original, "{text}");
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn inject_twice_is_inject_once_and_uninject_undoes_it(original in manifest()) {
        let inject = Mode::Inject(Box::default());
        let mut once = original.clone();
        run(&mut once, &inject);
        let mut twice = once.clone();
        run(&mut twice, &inject);
        prop_assert_eq!(&twice, &once);
        let mut undone = once.clone();
        run(&mut undone, &Mode::Uninject);
        prop_assert_eq!(&undone, &original);
    }

    #[test]
    fn any_input_is_read_or_refused(text in prop_oneof![
        any::<String>(),
        "(kind: |Pod|List|Deployment|items:|metadata:|spec:|containers:|template:|  - |name: a|\\n|---\\n|\\{|\\}|\\[|\\]){0,24}",
    ]) {
        let inject = Mode::Inject(Box::default());
        match input::parse("stdin", &text) {
            Ok(mut source) => {
                for doc in &mut source.documents {
                    prop_assert!(!run(doc, &inject).is_empty());
                }
            }
            Err(message) => prop_assert!(message.starts_with("stdin: ")),
        }
    }
}
