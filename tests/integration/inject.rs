//! `weft inject` as a user runs it: golden outputs for every workload kind,
//! Lists, multi-document files and kinds that pass through; idempotence and
//! exact uninjection; skips with reasons; `-o json`; the stderr report; exit
//! codes; and the worked example in `deploy/sidecar/`.
//!
//! Inputs are `tests/golden/inject/in/NAME.yaml`; a first line `# args: ...`
//! adds flags. Outputs are `out/NAME.yaml` (or `.json`) and `out/NAME.report`
//! (stderr). `UPDATE_GOLDEN=1 cargo test --test integration inject` rewrites
//! them.

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use crate::cli::{assert_no_failures, check_golden, root, weft};

fn golden_dir() -> PathBuf {
    root().join("tests/golden/inject")
}

/// Every golden input with its extra flags, in name order.
pub fn golden_inputs() -> Vec<(PathBuf, Vec<String>)> {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(golden_dir().join("in"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 14, "golden inputs missing: {inputs:?}");
    inputs
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let args = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# args: "))
                .unwrap_or_default();
            let args = args.split_whitespace().map(str::to_string).collect();
            (path, args)
        })
        .collect()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap().display().to_string()
}

fn inject(args: &[String], input: &str) -> crate::cli::Run {
    let mut all: Vec<&str> = vec!["inject"];
    all.extend(args.iter().map(String::as_str));
    all.push(input);
    weft(&all, b"")
}

fn documents(text: &str) -> Vec<Value> {
    weft::inject::input::parse("test", text).unwrap().documents
}

/// The output golden file for an input and its flags.
fn output_path(input: &Path, args: &[String]) -> PathBuf {
    let ext = if args.iter().any(|a| a == "json") {
        "json"
    } else {
        "yaml"
    };
    let stem = input.file_stem().unwrap().to_str().unwrap();
    golden_dir().join("out").join(format!("{stem}.{ext}"))
}

#[test]
fn golden_outputs_and_reports_for_every_kind() {
    let mut failures = Vec::new();
    for (input, args) in golden_inputs() {
        let run = inject(&args, &relative(&input));
        assert_eq!(run.code, 0, "{}: {}", input.display(), run.stderr);
        check_golden(&output_path(&input, &args), &run.stdout, &mut failures);
        let report = output_path(&input, &args).with_extension("report");
        check_golden(&report, &run.stderr, &mut failures);
    }
    assert_no_failures(&failures);
}

#[test]
fn reinjecting_changes_nothing_and_uninject_restores_the_input() {
    for (input, args) in golden_inputs() {
        let args: Vec<String> = args.into_iter().filter(|a| a != "-o" && a != "json").collect();
        let once = inject(&args, &relative(&input));
        let mut with_stdin: Vec<&str> = vec!["inject"];
        with_stdin.extend(args.iter().map(String::as_str));
        with_stdin.push("-");
        let twice = weft(&with_stdin, once.stdout.as_bytes());
        assert_eq!(twice.code, 0);
        assert_eq!(
            twice.stdout,
            once.stdout,
            "{}: inject(inject(x)) != inject(x)",
            input.display()
        );
        assert_eq!(twice.stderr, once.stderr, "{}", input.display());

        let back = weft(&["inject", "--uninject", "-"], once.stdout.as_bytes());
        assert_eq!(back.code, 0);
        let original = documents(&std::fs::read_to_string(&input).unwrap());
        assert_eq!(
            documents(&back.stdout),
            original,
            "{}: uninject(inject(x)) != x",
            input.display()
        );
        let injected = once.stderr.lines().filter(|l| l.contains(" injected")).count();
        let uninjected = back.stderr.lines().filter(|l| l.ends_with(" uninjected")).count();
        assert_eq!(uninjected, injected, "{}: {}", input.display(), back.stderr);
    }
}

#[test]
fn json_output_is_a_stream_of_the_same_objects() {
    let input = golden_dir().join("in/multi.yaml");
    let yaml = inject(&[], &relative(&input));
    let json = inject(&["-o".into(), "json".into()], &relative(&input));
    assert_eq!(json.code, 0);
    let objects: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&json.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<serde_json::Value> = documents(&yaml.stdout)
        .iter()
        .map(|d| serde_json::to_value(d).unwrap())
        .collect();
    assert_eq!(objects.len(), 3);
    assert_eq!(objects, expected);
    assert_eq!(json.stderr, yaml.stderr);
}

#[test]
fn directories_and_stdin_are_read_and_other_files_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    let pod = std::fs::read_to_string(golden_dir().join("in/pod.yaml")).unwrap();
    let job = std::fs::read_to_string(golden_dir().join("in/job.yaml")).unwrap();
    std::fs::write(dir.path().join("b/pod.yml"), &pod).unwrap();
    std::fs::write(
        dir.path().join("a.json"),
        r#"{"kind": "Service", "metadata": {"name": "s"}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "kind: Pod\n").unwrap();
    let run = weft(&["inject", dir.path().to_str().unwrap(), "-"], job.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        "service/s passed through\npod/debug injected\njob/report injected\n"
    );
    assert_eq!(run.stdout.matches("\n---\n").count(), 2, "{}", run.stdout);
}

#[test]
fn unreadable_input_fails_but_the_rest_is_still_written() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: Pod\nspec: [unclosed\n").unwrap();
    let missing = dir.path().join("missing.yaml");
    let pod = golden_dir().join("in/pod.yaml");
    let run = weft(
        &[
            "inject",
            bad.to_str().unwrap(),
            pod.to_str().unwrap(),
            missing.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stderr);
    assert!(lines[0].starts_with(&format!("weft inject: {}: ", bad.display())) && lines[0].contains("line"));
    assert_eq!(lines[1], "pod/debug injected");
    assert!(lines[2].starts_with(&format!("weft inject: {}: ", missing.display())));
    assert!(run.stdout.contains("name: weft-init"));
}

#[test]
fn bad_flags_exit_2_and_bad_annotations_only_skip() {
    let pod = relative(&golden_dir().join("in/pod.yaml"));
    let run = weft(&["inject", "--admin-port=http", &pod], b"");
    assert_eq!(run.code, 2);
    assert_eq!(run.stderr, "weft inject: --admin-port: \"http\" is not a port\n");
    assert!(run.stdout.is_empty());

    // A bare --native-sidecar means true and does not swallow the next argument.
    let native = weft(&["inject", "--native-sidecar", &pod], b"");
    assert_eq!((native.code, native.stderr.as_str()), (0, "pod/debug injected\n"));
    assert!(native.stdout.contains("restartPolicy: Always"));

    let skips = inject(&[], &relative(&golden_dir().join("in/skips.yaml")));
    assert_eq!(skips.code, 0);
    assert_eq!(
        skips.stderr,
        "deployment/opted-out skipped: weft.io/inject: disabled\n\
         daemonset/node-exporter skipped: hostNetwork\n\
         pod/istio-meshed skipped: already has an Istio sidecar (istio-proxy)\n\
         pod/linkerd-meshed skipped: already has a Linkerd sidecar (linkerd-proxy)\n\
         pod/typo skipped: unknown annotation weft.io/skip-inbound-port\n"
    );
    let original = documents(&std::fs::read_to_string(golden_dir().join("in/skips.yaml")).unwrap());
    assert_eq!(
        documents(&skips.stdout),
        original,
        "skipped objects must pass through unchanged"
    );
}

#[test]
fn deploy_example_is_the_output_of_inject() {
    let before = root().join("deploy/sidecar/deployment.yaml");
    let run = inject(&[], &relative(&before));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "deployment/web injected\nservice/web passed through\n");
    let mut failures = Vec::new();
    check_golden(
        &root().join("deploy/sidecar/deployment.injected.yaml"),
        &run.stdout,
        &mut failures,
    );
    assert_no_failures(&failures);
}

#[test]
fn the_image_has_what_the_injected_pod_assumes() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let uid = weft::capture::options::DEFAULT_PROXY_UID;
    assert!(
        dockerfile.contains(&format!("useradd --system --uid {uid} ")),
        "no user with the proxy uid {uid}"
    );
    assert!(dockerfile.contains(&format!("USER {uid}\n")));
    let install = dockerfile.lines().find(|l| l.contains("apt-get install")).unwrap();
    assert!(install.split_whitespace().any(|w| w == "iptables"), "{install}");
    let binary = weft::inject::containers::BINARY;
    assert!(dockerfile.contains(&format!("COPY --from=build /src/target/release/weft {binary}\n")));
    assert!(dockerfile.contains(&format!("ENTRYPOINT [\"{binary}\"]")));
}
