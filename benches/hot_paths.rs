//! criterion micro-benchmarks for the pure functions on every request:
//! route matching over 10 and 1000 routes, balancer picks over 3 and 300
//! endpoints, header rewriting, and trace context (parse, ids, `traceparent`)
//! with tracing off. Run: `cargo bench --bench hot_paths`.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use rand::{rngs::SmallRng, SeedableRng};
use weft::config::schema::{LbPolicy, RouteConfig};
use weft::front::headers;
use weft::policy::balancer::{self, Candidate, PickInput};
use weft::route;
use weft::telemetry::trace::{TraceMetrics, Tracing};

fn routes(n: usize) -> Vec<route::Route> {
    let clusters = HashMap::from([("c", 0usize)]);
    (0..n)
        .map(|i| {
            let yaml = format!(
                "{{ name: r{i}, match: {{ path_prefix: /svc{i}/, headers: [ {{ name: x-tenant, exact: t{i} }} ] }}, cluster: c }}"
            );
            let config: RouteConfig = serde_yaml_ng::from_str(&yaml).expect("valid route");
            route::compile(&config, &clusters).expect("compiles")
        })
        .collect()
}

fn route_matching(c: &mut Criterion) {
    let mut h = HeaderMap::new();
    for n in [10usize, 1000] {
        let table = routes(n);
        let last = n - 1;
        h.insert("x-tenant", HeaderValue::try_from(format!("t{last}")).expect("header"));
        let path = format!("/svc{last}/items/42");
        c.bench_function(&format!("route_match_last_of_{n}"), |b| {
            b.iter(|| {
                route::find(
                    black_box(&table),
                    &Method::GET,
                    black_box(&path),
                    &h,
                    None,
                    &route::no_original_destination,
                )
            })
        });
    }
}

struct Ep(u32, usize);
impl Candidate for Ep {
    fn weight(&self) -> u32 {
        self.0
    }
    fn in_flight(&self) -> usize {
        self.1
    }
}

fn balancer_pick(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(1);
    let now = tokio::time::Instant::now();
    for n in [3usize, 300] {
        let endpoints: Vec<Ep> = (0..n).map(|i| Ep(1 + (i % 3) as u32, i % 7)).collect();
        for policy in [LbPolicy::RoundRobin, LbPolicy::LeastRequest, LbPolicy::P2cEwma] {
            let mut counter = 0u64;
            c.bench_function(&format!("pick_{policy:?}_{n}"), |b| {
                b.iter(|| {
                    counter += 1;
                    let input = PickInput {
                        counter,
                        exclude: None,
                        now,
                        ignore_health: false,
                    };
                    balancer::pick(policy, black_box(&endpoints), |_| true, input, &mut rng)
                })
            });
        }
    }
}

fn header_rewriting(c: &mut Criterion) {
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "example.com"),
        ("user-agent", "curl/8"),
        ("accept", "*/*"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "10.0.0.1"),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    let client = "127.0.0.1".parse().expect("ip");
    c.bench_function("rewrite_request_headers", |b| {
        b.iter(|| {
            let mut h = base.clone();
            headers::strip_hop_by_hop(&mut h, false);
            let id = headers::set_forwarding(&mut h, client, "http", None);
            black_box((h, id))
        })
    });
}

/// What every request pays for trace context when no span is recorded.
fn trace_context(c: &mut Criterion) {
    let tracing = Tracing::new(TraceMetrics::new(&prometheus::Registry::new()).expect("metrics"));
    for (name, incoming) in [
        ("trace_context_new_trace", None),
        (
            "trace_context_w3c_parent",
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ),
    ] {
        let mut base = HeaderMap::new();
        base.insert("host", HeaderValue::from_static("example.com"));
        if let Some(tp) = incoming {
            base.insert("traceparent", HeaderValue::from_static(tp));
        }
        c.bench_function(name, |b| {
            b.iter(|| {
                let mut h = base.clone();
                let trace = tracing.start(&mut h);
                black_box((trace.trace_id().as_str().len(), h))
            })
        });
    }
}

criterion_group!(benches, route_matching, balancer_pick, header_rewriting, trace_context);
criterion_main!(benches);
