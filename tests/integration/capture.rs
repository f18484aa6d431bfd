//! `weft init-iptables`: the dry-run command list against golden files, and
//! real runs in fresh network namespaces (root, `ip`, iptables' nft and
//! legacy tools; `.ci/run` installs iptables): the table after one run
//! matches the golden `iptables-save`, a second run leaves it identical and
//! adds no second hook, and `--cleanup` leaves no trace of weft.
//!
//! `UPDATE_GOLDEN=1` rewrites `tests/golden/init-iptables/*`.

use std::process::Command;

use crate::cli::{assert_no_failures, check_golden, have_tool, into_run, root, weft};
use crate::netns::{self, NetNs};

/// The flags of each golden case: the defaults, and every list at once with
/// more skip ports than one multiport rule takes.
const CASES: [(&str, &[&str]); 2] = [
    ("default", &[]),
    (
        "skips",
        &[
            "--skip-inbound-ports=22,80,443,1000,1001,1002,1003,1004,1005,1006,1007,1008,1009,1010,1011,1012,8000-8010",
            "--skip-outbound-ports=3306,25",
            "--skip-subnets=10.96.0.0/12,169.254.169.254,fd00:10:96::/112",
            "--inbound-port=16006",
            "--outbound-port=16001",
            "--proxy-uid=2102",
            "--admin-port=9902",
        ],
    ),
];

fn golden(name: &str) -> std::path::PathBuf {
    root().join("tests/golden/init-iptables").join(name)
}

fn init_iptables(prefix: &[&str], flags: &[&str]) -> crate::cli::Run {
    let mut args: Vec<&str> = vec!["init-iptables"];
    args.extend(flags);
    if prefix.is_empty() {
        return weft(&args, b"");
    }
    let bin = env!("CARGO_BIN_EXE_weft");
    into_run(
        Command::new(prefix[0])
            .args(&prefix[1..])
            .arg(bin)
            .args(&args)
            .output()
            .unwrap(),
    )
}

#[test]
fn dry_run_prints_the_golden_command_lists() {
    let mut failures = Vec::new();
    for (name, flags) in CASES {
        let run = init_iptables(&[], &[&["--dry-run"], flags].concat());
        assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{name}");
        check_golden(&golden(&format!("{name}.txt")), &run.stdout, &mut failures);
        let cleanup = init_iptables(&[], &[&["--dry-run", "--cleanup"], flags].concat());
        check_golden(&golden(&format!("{name}.cleanup.txt")), &cleanup.stdout, &mut failures);
    }
    let legacy = init_iptables(&[], &["--dry-run", "--backend=legacy"]);
    check_golden(&golden("default.legacy.txt"), &legacy.stdout, &mut failures);
    assert_no_failures(&failures);
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let run = init_iptables(&[], &["--dry-run", "--skip-subnets=10.0.0.0/40"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .starts_with("weft init-iptables: --skip-subnets: \"10.0.0.0/40\""),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
}

/// Both families' nat tables in `ns` as saved, without comments and counters.
fn nat_tables(ns: &NetNs, backend: &str) -> String {
    let mut text = String::new();
    for family in ["iptables", "ip6tables"] {
        let save = format!("{family}-{backend}-save");
        let run = into_run(
            Command::new("ip")
                .args(["netns", "exec", &ns.name, &save, "-t", "nat"])
                .output()
                .unwrap(),
        );
        assert_eq!(run.code, 0, "{save}: {}", run.stderr);
        text.push_str(&format!("# {family}\n"));
        for line in run.stdout.lines().filter(|l| !l.starts_with('#')) {
            text.push_str(line.split(" [").next().unwrap_or(line));
            text.push('\n');
        }
    }
    text
}

fn can_run_in_netns(test: &str) -> bool {
    netns::available(test)
        && have_tool("iptables-nft-save", &["--version"], test)
        && have_tool("iptables-legacy-save", &["--version"], test)
}

/// One backend: two runs give one table, equal to the golden one, and the
/// first run printed exactly the dry-run list; cleanup removes everything.
fn real_runs(backend: &str, failures: &mut Vec<String>) {
    for (name, flags) in CASES {
        let ns = NetNs::new();
        let backend_flag = format!("--backend={backend}");
        let flags = [&[backend_flag.as_str()][..], flags].concat();
        let fresh = nat_tables(&ns, backend);
        assert!(!fresh.contains("WEFT"), "{fresh}");

        let first = init_iptables(&ns.exec(), &flags);
        assert_eq!(first.code, 0, "{name}/{backend}: {}", first.stderr);
        let dry = init_iptables(&[], &[&["--dry-run"], &flags[..]].concat());
        assert_eq!(
            first.stdout, dry.stdout,
            "{name}/{backend}: a real run in a fresh namespace runs the dry-run list"
        );
        let table = nat_tables(&ns, backend);
        check_golden(&golden(&format!("{name}.save")), &table, failures);

        let second = init_iptables(&ns.exec(), &flags);
        assert_eq!(second.code, 0, "{name}/{backend}: {}", second.stderr);
        assert!(second.stdout.contains("-t nat -F WEFT_INBOUND"), "{}", second.stdout);
        assert!(
            !second.stdout.contains("-A PREROUTING"),
            "hook added twice: {}",
            second.stdout
        );
        assert_eq!(
            nat_tables(&ns, backend),
            table,
            "{name}/{backend}: a second run changed the table"
        );

        for _ in 0..2 {
            let cleanup = init_iptables(&ns.exec(), &[&["--cleanup"], &flags[..]].concat());
            assert_eq!(cleanup.code, 0, "{name}/{backend}: {}", cleanup.stderr);
            let after = nat_tables(&ns, backend);
            assert!(!after.contains("WEFT"), "{name}/{backend}: cleanup left {after}");
        }
    }
}

#[test]
fn real_runs_in_fresh_namespaces_are_repeatable_and_clean_up() {
    if !can_run_in_netns("init-iptables in a network namespace") {
        return;
    }
    let mut failures = Vec::new();
    real_runs("nft", &mut failures);
    real_runs("legacy", &mut failures);
    assert_no_failures(&failures);
}

#[test]
fn auto_backend_takes_nft() {
    if !can_run_in_netns("init-iptables backend choice") {
        return;
    }
    let ns = NetNs::new();
    let run = init_iptables(&ns.exec(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("iptables-nft -t nat -N WEFT_INBOUND\n"),
        "{}",
        run.stdout
    );
    assert!(nat_tables(&ns, "nft").contains("-A OUTPUT -p tcp -j WEFT_OUTBOUND"));
    assert!(!nat_tables(&ns, "legacy").contains("WEFT"));
}

#[test]
fn auto_backend_falls_back_to_legacy_when_nft_is_missing() {
    if !can_run_in_netns("init-iptables legacy fallback") {
        return;
    }
    // A PATH with only the legacy tools: nft's cannot be found.
    let bin = tempfile::tempdir().unwrap();
    for tool in [
        "iptables-legacy",
        "iptables-legacy-save",
        "ip6tables-legacy",
        "ip6tables-legacy-save",
    ] {
        let target = which(tool);
        std::os::unix::fs::symlink(&target, bin.path().join(tool)).unwrap();
    }
    let ns = NetNs::new();
    let run = into_run(
        Command::new(which("ip"))
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_weft"), "init-iptables"])
            .env("PATH", bin.path())
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("iptables-legacy -t nat -N WEFT_INBOUND\n"),
        "{}",
        run.stdout
    );
    assert!(nat_tables(&ns, "legacy").contains("-A PREROUTING -p tcp -j WEFT_INBOUND"));
    assert!(!nat_tables(&ns, "nft").contains("WEFT"));
}

/// The absolute path of a program on PATH.
fn which(program: &str) -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|dir| dir.join(program))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{program} not on PATH"))
}
