//! Every manifest weft generates or ships validates against the Kubernetes
//! 1.29 schemas in strict mode (unknown fields rejected), with PyPI's
//! `kubernetes-validate`, which bundles the schemas and runs offline
//! (`.ci/run` installs it). `kind: List` has no schema, so Lists are checked
//! item by item; JSON output is checked as the same objects in YAML.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

use crate::cli::{have_tool, into_run, root, weft};
use crate::inject::golden_inputs;

/// `python3 -m kubernetes_validate`, so no console-script shim is needed on PATH.
const VALIDATOR: [&str; 3] = ["python3", "-m", "kubernetes_validate"];
const VERSION: &str = "1.29.0";

/// Runs the validator on `files`: its verdict and output.
fn validate(files: &[PathBuf]) -> (bool, String) {
    let run = into_run(
        Command::new(VALIDATOR[0])
            .args(&VALIDATOR[1..])
            .args(["-k", VERSION, "--strict"])
            .args(files)
            .output()
            .unwrap(),
    );
    (run.code == 0, format!("{}{}", run.stdout, run.stderr))
}

/// The objects of a manifest file, Lists flattened to their items.
fn objects(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs: Vec<Value> = if path.extension().is_some_and(|e| e == "json") {
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap()
    } else {
        weft::inject::input::parse("", &text).unwrap().documents
    };
    let mut out = Vec::new();
    for doc in docs {
        match doc.get("kind").and_then(Value::as_str) {
            Some("List") => out.extend(doc["items"].as_sequence().unwrap().iter().cloned()),
            _ => out.push(doc),
        }
    }
    out
}

/// Writes the objects as one multi-document YAML file.
fn write_objects(path: &Path, objects: &[Value]) {
    let docs: Vec<String> = objects.iter().map(|o| serde_yaml_ng::to_string(o).unwrap()).collect();
    std::fs::write(path, docs.join("---\n")).unwrap();
}

#[test]
fn injected_manifests_and_deploy_examples_validate_against_kubernetes_1_29() {
    if !have_tool(
        VALIDATOR[0],
        &[&VALIDATOR[1..], &["--version"]].concat(),
        "k8s schema validation",
    ) {
        return;
    }
    // What inject prints now for every golden input, and the shipped example.
    let dir = tempfile::tempdir().unwrap();
    let mut sources: Vec<PathBuf> = Vec::new();
    for (input, args) in golden_inputs() {
        let mut all: Vec<&str> = vec!["inject"];
        all.extend(args.iter().map(String::as_str));
        all.push(input.to_str().unwrap());
        let run = weft(&all, b"");
        assert_eq!(run.code, 0, "{}", run.stderr);
        let ext = if args.iter().any(|a| a == "json") {
            "json"
        } else {
            "yaml"
        };
        let path = dir
            .path()
            .join(format!("{}.{ext}", input.file_stem().unwrap().to_str().unwrap()));
        std::fs::write(&path, run.stdout).unwrap();
        sources.push(path);
    }
    for entry in std::fs::read_dir(root().join("deploy/sidecar")).unwrap() {
        sources.push(entry.unwrap().path());
    }
    let mut files = Vec::new();
    let mut count = 0;
    for (i, source) in sources.iter().enumerate() {
        let objects = objects(source);
        assert!(!objects.is_empty(), "{} has no objects", source.display());
        count += objects.len();
        let file = dir.path().join(format!("checked-{i:02}.yaml"));
        write_objects(&file, &objects);
        files.push(file);
    }
    let (ok, output) = validate(&files);
    assert!(ok, "{output}");
    // Every object was checked against a schema (none skipped as unknown).
    assert!(!output.contains("Couldn't find schema"), "{output}");
    assert_eq!(output.matches(" passed for resource ").count(), count, "{output}");
}

#[test]
fn the_validator_rejects_an_unknown_field_and_a_wrong_type() {
    if !have_tool(
        VALIDATOR[0],
        &[&VALIDATOR[1..], &["--version"]].concat(),
        "k8s schema validation",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deployment = &objects(&root().join("deploy/sidecar/deployment.injected.yaml"))[0];
    for name in ["unknown-field", "wrong-type"] {
        let mut broken = deployment.clone();
        let weft = &mut broken["spec"]["template"]["spec"]["initContainers"][1];
        assert_eq!(weft["name"].as_str(), Some("weft"));
        match name {
            "unknown-field" => weft["restartPolicyy"] = Value::String("Always".into()),
            _ => weft["securityContext"]["runAsUser"] = Value::String("weft".into()),
        }
        let file = dir.path().join(format!("{name}.yaml"));
        write_objects(&file, &[broken]);
        let (ok, output) = validate(&[file]);
        assert!(!ok, "{name} was accepted: {output}");
    }
}

/// What Kubernetes discovery needs is shipped: a Role granting get, list and
/// watch on `discovery.k8s.io` endpointslices, bound to the ServiceAccount
/// the example Deployment runs as (the schema test above checks the form).
#[test]
fn the_shipped_rbac_lets_the_deployments_account_watch_endpointslices() {
    let sidecar = root().join("deploy/sidecar");
    let rbac = objects(&sidecar.join("rbac.yaml"));
    let of_kind = |objects: &[Value], kind: &str| -> Vec<Value> {
        objects
            .iter()
            .filter(|o| o["kind"].as_str() == Some(kind))
            .cloned()
            .collect()
    };
    let deployment = &of_kind(&objects(&sidecar.join("deployment.yaml")), "Deployment")[0];
    let account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    assert!(of_kind(&rbac, "ServiceAccount")
        .iter()
        .any(|a| a["metadata"]["name"].as_str() == Some(account)));
    let strings = |v: &Value| -> Vec<String> {
        v.as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let roles: Vec<String> = of_kind(&rbac, "Role")
        .iter()
        .filter(|role| {
            role["rules"].as_sequence().into_iter().flatten().any(|rule| {
                let verbs = strings(&rule["verbs"]);
                strings(&rule["apiGroups"]).contains(&"discovery.k8s.io".into())
                    && strings(&rule["resources"]).contains(&"endpointslices".into())
                    && ["get", "list", "watch"].iter().all(|v| verbs.contains(&v.to_string()))
            })
        })
        .map(|role| role["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(roles.len(), 1, "one Role grants get/list/watch on endpointslices");
    let bound = of_kind(&rbac, "RoleBinding").iter().any(|binding| {
        binding["roleRef"]["kind"].as_str() == Some("Role")
            && binding["roleRef"]["name"].as_str() == Some(roles[0].as_str())
            && binding["subjects"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|s| s["kind"].as_str() == Some("ServiceAccount") && s["name"].as_str() == Some(account))
    });
    assert!(bound, "the Role is bound to ServiceAccount {account}");
}
