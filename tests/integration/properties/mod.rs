//! Property-based tests (proptest): the functions that read what clients or
//! config authors write get generated input on every `cargo test`, a bounded
//! number of cases each, and must answer (a value, a keyed error, `false`)
//! without panicking, keeping the guarantees their module docs state. The
//! same functions are fuzz targets under `fuzz/` for longer, coverage-guided
//! runs (README, "Fuzzing").

mod config;
mod discovery;
mod headers;
mod inject;
mod json_diff;
mod routing;
mod trace_context;

use proptest::test_runner::Config;

/// `cases` cases (or `PROPTEST_CASES`, for a longer run), with failing
/// inputs shrunk but not written to files: a failure prints its minimal
/// input, which then becomes a named test.
pub fn cases(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}
