//! Adding weft to one pod (a Pod object or a workload's pod template: the
//! mapping holding `metadata` and `spec`) and taking it out again.
//!
//! Injection records in the `weft.io/status` annotation exactly what it
//! added: the containers and volumes by name, and the keys it had to create
//! (`metadata`, `metadata.annotations`, `spec.initContainers`,
//! `spec.volumes`). Uninjection removes those and nothing else, so
//! `uninject(inject(pod)) == pod`, and injecting an injected pod first
//! uninjects it, so `inject(inject(pod)) == inject(pod)`.

use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

use super::containers::{self, CONFIG_VOLUME, INIT_CONTAINER, LOCK_VOLUME, PROXY_CONTAINER};
use super::options::{scalar_text, InjectOptions, INJECT_ANNOTATION, STATUS_ANNOTATION};

/// What an injection added, as recorded in `weft.io/status`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Status {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Keys that did not exist before, removed again when left empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<String>,
    /// Keys that were null before, set back to null when left empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nulled: Vec<String>,
}

/// Sidecars of other meshes: a pod carrying one is left alone.
const FOREIGN_SIDECARS: [(&str, &str); 4] = [
    ("istio-proxy", "an Istio"),
    ("istio-init", "an Istio"),
    ("linkerd-proxy", "a Linkerd"),
    ("linkerd-init", "a Linkerd"),
];

/// How the caller describes the pod's owner, for warnings.
pub struct PodKind {
    /// Job or CronJob: its pods are meant to finish.
    pub runs_to_completion: bool,
}

/// Injects weft into a pod that carries no injection (see [`uninject`]).
/// `Ok` holds warnings for the report; `Err` the reason it was skipped, in
/// which case the pod is unchanged.
pub fn inject(pod: &mut Mapping, defaults: &InjectOptions, kind: &PodKind) -> Result<Vec<String>, String> {
    let annotations = pod
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_mapping);
    match annotations
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .and_then(scalar_text)
        .as_deref()
    {
        None | Some("enabled") => {}
        Some("disabled") => return Err(format!("{INJECT_ANNOTATION}: disabled")),
        Some(other) => return Err(format!("{INJECT_ANNOTATION}: {other:?} is not enabled or disabled")),
    }
    let metadata = pod.get("metadata");
    if metadata.is_some_and(|m| !m.is_null() && !m.is_mapping())
        || metadata
            .and_then(|m| m.get("annotations"))
            .is_some_and(|a| !a.is_null() && !a.is_mapping())
    {
        return Err("metadata or its annotations are not a mapping".into());
    }
    let opts = defaults.with_annotations(annotations)?;
    let spec = pod.get("spec").and_then(Value::as_mapping).ok_or("no pod spec")?;
    check_can_inject(spec)?;
    let warnings = warnings(spec, &opts, kind);

    let init = containers::init_container(&opts)?;
    let proxy = containers::proxy_container(&opts)?;
    let volumes = containers::volumes(&opts)?;
    let mut status = Status::default();
    let spec = pod
        .get_mut("spec")
        .and_then(Value::as_mapping_mut)
        .ok_or("no pod spec")?;
    let init_list = sequence(spec, "initContainers", &mut status, "spec.initContainers")?;
    if opts.native_sidecar {
        init_list.splice(0..0, [init, proxy]);
        status.init_containers = vec![INIT_CONTAINER.into(), PROXY_CONTAINER.into()];
    } else {
        init_list.insert(0, init);
        status.init_containers = vec![INIT_CONTAINER.into()];
        sequence(spec, "containers", &mut status, "spec.containers")?.insert(0, proxy);
        status.containers = vec![PROXY_CONTAINER.into()];
    }
    sequence(spec, "volumes", &mut status, "spec.volumes")?.extend(volumes);
    status.volumes = vec![CONFIG_VOLUME.into(), LOCK_VOLUME.into()];

    let metadata = entry(pod, "metadata", &mut status, "metadata")?;
    let annotations = entry(metadata, "annotations", &mut status, "metadata.annotations")?;
    let record = serde_json::to_string(&status).map_err(|e| format!("cannot record the injection: {e}"))?;
    annotations.insert(STATUS_ANNOTATION.into(), Value::String(record));
    Ok(warnings)
}

/// Removes a recorded injection; `Ok(false)` when the pod carries none. An
/// unreadable record is an error and leaves the pod unchanged.
pub fn uninject(pod: &mut Mapping) -> Result<bool, String> {
    let record = pod
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(STATUS_ANNOTATION))
        .and_then(Value::as_str);
    let Some(record) = record else { return Ok(false) };
    let status: Status =
        serde_json::from_str(record).map_err(|e| format!("{STATUS_ANNOTATION} is not weft's record: {e}"))?;
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_mapping_mut) {
        remove_named(spec, "initContainers", &status.init_containers);
        remove_named(spec, "containers", &status.containers);
        remove_named(spec, "volumes", &status.volumes);
    }
    if let Some(annotations) = pod
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(Value::as_mapping_mut)
    {
        annotations.remove(STATUS_ANNOTATION);
    }
    // Innermost first, so a created parent is seen empty once its child is gone.
    for path in status.created.iter().rev() {
        remove_if_empty(pod, path, false);
    }
    // A null key never holds a created one: its children are all created.
    for path in status.nulled.iter().rev() {
        remove_if_empty(pod, path, true);
    }
    Ok(true)
}

/// The reasons not to inject a pod that weft could otherwise handle.
fn check_can_inject(spec: &Mapping) -> Result<(), String> {
    // Checked up front so a skipped pod is left untouched.
    if spec
        .get("containers")
        .and_then(Value::as_sequence)
        .is_none_or(Vec::is_empty)
    {
        return Err("no containers".into());
    }
    for key in ["initContainers", "volumes"] {
        if spec.get(key).is_some_and(|v| !v.is_null() && !v.is_sequence()) {
            return Err(format!("spec.{key} is not a list"));
        }
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err("hostNetwork".into());
    }
    let names = |key: &str| -> Vec<String> {
        let items = spec.get(key).and_then(Value::as_sequence).into_iter().flatten();
        items
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
            .collect()
    };
    let containers: Vec<String> = names("initContainers").into_iter().chain(names("containers")).collect();
    for (name, mesh) in FOREIGN_SIDECARS {
        if containers.iter().any(|c| c == name) {
            return Err(format!("already has {mesh} sidecar ({name})"));
        }
    }
    for ours in [INIT_CONTAINER, PROXY_CONTAINER] {
        if containers.iter().any(|c| c == ours) {
            return Err(format!("a container named {ours} already exists"));
        }
    }
    let volumes = names("volumes");
    for ours in [CONFIG_VOLUME, LOCK_VOLUME] {
        if volumes.iter().any(|v| v == ours) {
            return Err(format!("a volume named {ours} already exists"));
        }
    }
    Ok(())
}

/// What works but will surprise: completions held up, traffic that
/// bypasses weft, init containers without network.
fn warnings(spec: &Mapping, opts: &InjectOptions, kind: &PodKind) -> Vec<String> {
    let mut warnings = Vec::new();
    let restart = spec.get("restartPolicy").and_then(Value::as_str);
    let finishes = kind.runs_to_completion || matches!(restart, Some("Never" | "OnFailure"));
    if !opts.native_sidecar && finishes {
        warnings.push(
            "without native sidecars weft keeps running after the other containers exit, so the pod never completes"
                .into(),
        );
    }
    if !opts.native_sidecar
        && spec
            .get("initContainers")
            .and_then(Value::as_sequence)
            .is_some_and(|s| !s.is_empty())
    {
        warnings.push("without native sidecars the pod's own init containers run captured before weft starts: they have no network".into());
    }
    let uid = |v: &Value| {
        v.get("securityContext")
            .and_then(|s| s.get("runAsUser"))
            .and_then(Value::as_u64)
    };
    let pod_uid = uid(&Value::Mapping(spec.clone()));
    for c in spec
        .get("containers")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        if uid(c).or(pod_uid) == Some(u64::from(opts.capture.proxy_uid)) {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
            warnings.push(format!(
                "container {name} runs as uid {}, the proxy's: its connections bypass weft",
                opts.capture.proxy_uid
            ));
        }
    }
    warnings
}

/// The mapping under `key`, created (and noted in `created`) when absent or null.
fn entry<'a>(map: &'a mut Mapping, key: &str, status: &mut Status, path: &str) -> Result<&'a mut Mapping, String> {
    if must_make(map, key, status, path) {
        map.insert(key.into(), Value::Mapping(Mapping::new()));
    }
    map.get_mut(key)
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| format!("{path} is not a mapping"))
}

/// The sequence under `key`, created (and noted) when absent or null.
fn sequence<'a>(
    map: &'a mut Mapping,
    key: &str,
    status: &mut Status,
    path: &str,
) -> Result<&'a mut Vec<Value>, String> {
    if must_make(map, key, status, path) {
        map.insert(key.into(), Value::Sequence(Vec::new()));
    }
    map.get_mut(key)
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| format!("{path} is not a list"))
}

/// Whether `key` must be made (absent or null): if so, `path` is noted in
/// `status` as created, or as null before (uninjecting puts the null back).
fn must_make(map: &Mapping, key: &str, status: &mut Status, path: &str) -> bool {
    match map.get(key) {
        None => status.created.push(path.into()),
        Some(Value::Null) => status.nulled.push(path.into()),
        Some(_) => return false,
    }
    true
}

fn remove_named(spec: &mut Mapping, key: &str, names: &[String]) {
    if let Some(items) = spec.get_mut(key).and_then(Value::as_sequence_mut) {
        items.retain(|item| {
            !item
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| names.iter().any(|x| x == n))
        });
    }
}

/// Empties the key at a dotted `path` when its value is an empty mapping or
/// list: removed, or set back to null when `was_null`.
fn remove_if_empty(pod: &mut Mapping, path: &str, was_null: bool) {
    let (parent_path, key) = match path.rsplit_once('.') {
        Some((p, k)) => (Some(p), k),
        None => (None, path),
    };
    let mut parent = Some(&mut *pod);
    for part in parent_path.into_iter().flat_map(|p| p.split('.')) {
        parent = parent.and_then(|m| m.get_mut(part)).and_then(Value::as_mapping_mut);
    }
    let Some(parent) = parent else { return };
    let empty = match parent.get(key) {
        Some(Value::Mapping(m)) => m.is_empty(),
        Some(Value::Sequence(s)) => s.is_empty(),
        _ => false,
    };
    if empty && was_null {
        parent.insert(key.into(), Value::Null);
    } else if empty {
        parent.remove(key);
    }
}
