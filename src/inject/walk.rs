//! Finding the pods in manifests: a Pod itself, the pod template of a
//! Deployment, StatefulSet, DaemonSet, ReplicaSet or Job, the job template's
//! pod template of a CronJob, and each item of a `kind: List` (Lists nest).
//! Every other object passes through unchanged. Each object yields one
//! report line (`deployment/web injected`, `pod/db skipped: hostNetwork`).

use serde_yaml_ng::{Mapping, Value};

use super::options::InjectOptions;
use super::patch::{self, PodKind};

/// What to do with each pod.
pub enum Mode {
    Inject(Box<InjectOptions>),
    Uninject,
}

/// Processes one document in place and appends its report lines.
pub fn process(doc: &mut Value, mode: &Mode, report: &mut Vec<String>) {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    if kind == "List" {
        if let Some(items) = doc.get_mut("items").and_then(Value::as_sequence_mut) {
            for item in items {
                process(item, mode, report);
            }
            return;
        }
    }
    let label = label(doc, &kind);
    let runs_to_completion = matches!(kind.as_str(), "Job" | "CronJob");
    let Some(pod) = pod_mut(doc, &kind) else {
        report.push(format!("{label} passed through"));
        return;
    };
    let line = match mode {
        Mode::Inject(opts) => inject(pod, opts, &PodKind { runs_to_completion }),
        Mode::Uninject => match patch::uninject(pod) {
            Ok(true) => "uninjected".to_string(),
            Ok(false) => "skipped: not injected".to_string(),
            Err(e) => format!("skipped: {e}"),
        },
    };
    report.push(format!("{label} {line}"));
}

/// Injects one pod, removing an earlier injection first so the result does
/// not depend on it; the report line's verb and reasons.
fn inject(pod: &mut Mapping, opts: &InjectOptions, kind: &PodKind) -> String {
    let removed = match patch::uninject(pod) {
        Ok(removed) => removed,
        Err(e) => return format!("skipped: {e}"),
    };
    match patch::inject(pod, opts, kind) {
        Ok(warnings) if warnings.is_empty() => "injected".to_string(),
        Ok(warnings) => format!("injected; warning: {}", warnings.join("; warning: ")),
        Err(reason) if removed => format!("skipped: {reason} (the earlier injection was removed)"),
        Err(reason) => format!("skipped: {reason}"),
    }
}

/// The mapping holding the pod's `metadata` and `spec`, for kinds that have one.
fn pod_mut<'a>(doc: &'a mut Value, kind: &str) -> Option<&'a mut Mapping> {
    let path: &[&str] = match kind {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    };
    let mut node = doc;
    for key in path {
        node = node.get_mut(*key)?;
    }
    node.as_mapping_mut()
}

/// `kind/name` as kubectl prints it.
fn label(doc: &Value, kind: &str) -> String {
    let metadata = doc.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let generated = metadata
        .and_then(|m| m.get("generateName"))
        .and_then(Value::as_str)
        .map(|g| format!("{g}*"));
    let kind = if kind.is_empty() {
        "object".to_string()
    } else {
        kind.to_lowercase()
    };
    format!("{kind}/{}", name.or(generated).unwrap_or_else(|| "(unnamed)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str, mode: &Mode) -> (Value, Vec<String>) {
        let mut doc: Value = serde_yaml_ng::from_str(yaml).unwrap();
        let mut report = Vec::new();
        process(&mut doc, mode, &mut report);
        (doc, report)
    }

    const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: web }\nspec:\n  selector: { matchLabels: { app: web } }\n  template:\n    metadata: { labels: { app: web } }\n    spec:\n      containers: [ { name: app, image: web:1 } ]\n";

    fn inject_mode() -> Mode {
        Mode::Inject(Box::default())
    }

    #[test]
    fn inject_is_idempotent_and_uninject_restores_exactly() {
        let original: Value = serde_yaml_ng::from_str(DEPLOYMENT).unwrap();
        let (once, report) = run(DEPLOYMENT, &inject_mode());
        assert_eq!(report, ["deployment/web injected"]);
        assert_ne!(once, original);
        let (twice, report) = run(&serde_yaml_ng::to_string(&once).unwrap(), &inject_mode());
        assert_eq!(report, ["deployment/web injected"]);
        assert_eq!(twice, once);
        // Re-injecting with other options replaces the injection instead of adding a second one.
        let mut other = InjectOptions::default();
        other.set("image", "weft:2").unwrap();
        let (changed, _) = run(
            &serde_yaml_ng::to_string(&once).unwrap(),
            &Mode::Inject(Box::new(other)),
        );
        let init = changed["spec"]["template"]["spec"]["initContainers"]
            .as_sequence()
            .unwrap();
        let images: Vec<&str> = init.iter().map(|c| c["image"].as_str().unwrap()).collect();
        assert_eq!(images, ["weft:2", "weft:2"]);
        let (back, report) = run(&serde_yaml_ng::to_string(&once).unwrap(), &Mode::Uninject);
        assert_eq!(report, ["deployment/web uninjected"]);
        assert_eq!(back, original);
    }

    #[test]
    fn created_keys_are_removed_again_and_existing_empty_ones_kept() {
        // A Job template with no metadata, no volumes, and an empty initContainers list.
        let job = "apiVersion: batch/v1\nkind: Job\nmetadata: { name: j }\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      initContainers: []\n      containers: [ { name: c, image: i } ]\n";
        let original: Value = serde_yaml_ng::from_str(job).unwrap();
        let (injected, _) = run(job, &inject_mode());
        let status = injected["spec"]["template"]["metadata"]["annotations"]["weft.io/status"]
            .as_str()
            .unwrap();
        assert_eq!(
            status,
            r#"{"initContainers":["weft-init","weft"],"volumes":["weft-config","weft-xtables-lock"],"created":["spec.volumes","metadata","metadata.annotations"]}"#
        );
        let (back, _) = run(&serde_yaml_ng::to_string(&injected).unwrap(), &Mode::Uninject);
        assert_eq!(back, original);
    }

    #[test]
    fn skipped_pods_are_unchanged_and_say_why() {
        for (patch, reason) in [
            ("hostNetwork: true", "hostNetwork"),
            (
                "initContainers: [ { name: istio-init, image: i } ]",
                "already has an Istio sidecar (istio-init)",
            ),
            (
                "volumes: [ { name: weft-config, emptyDir: {} } ]",
                "a volume named weft-config already exists",
            ),
            ("initContainers: oops", "spec.initContainers is not a list"),
        ] {
            let yaml = format!(
                "kind: Pod\nmetadata: {{ name: p }}\nspec:\n  {patch}\n  containers: [ {{ name: c, image: i }} ]\n"
            );
            let original: Value = serde_yaml_ng::from_str(&yaml).unwrap();
            let (out, report) = run(&yaml, &inject_mode());
            assert_eq!(report, [format!("pod/p skipped: {reason}")]);
            assert_eq!(out, original);
        }
    }

    #[test]
    fn disabling_an_injected_pod_removes_the_injection() {
        let (injected, _) = run(
            "kind: Pod\nmetadata: { name: p }\nspec: { containers: [ { name: c, image: i } ] }\n",
            &inject_mode(),
        );
        let mut doc = injected.clone();
        doc["metadata"]["annotations"]["weft.io/inject"] = Value::String("disabled".into());
        let mut report = Vec::new();
        process(&mut doc, &inject_mode(), &mut report);
        assert_eq!(
            report,
            ["pod/p skipped: weft.io/inject: disabled (the earlier injection was removed)"]
        );
        assert!(doc["spec"].get("initContainers").is_none(), "{doc:?}");
    }

    #[test]
    fn lists_nest_and_other_kinds_pass_through() {
        let list = format!(
            "kind: List\nitems:\n  - {{ kind: Service, metadata: {{ name: s }} }}\n  - kind: List\n    items:\n{}",
            DEPLOYMENT
                .lines()
                .map(|l| format!("      {}{l}\n", if l.starts_with("apiVersion") { "- " } else { "  " }))
                .collect::<String>()
        );
        let (_, report) = run(&list, &inject_mode());
        assert_eq!(report, ["service/s passed through", "deployment/web injected"]);
    }
}
