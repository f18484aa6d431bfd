//! Unit tests of discovery, compiled only under `#[cfg(test)]` (see `mod tests` in mod.rs).
//!
//! The reporting every source shares: a failure keeps the last set, each
//! look is counted by result, the status says what happened last.

use super::*;
use crate::policy::discovery::RefreshConfig;

fn spec(port: u16) -> EndpointSpec {
    EndpointSpec {
        address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        zone: None,
        weight: 1,
    }
}

fn file_discovery(metrics: &Metrics) -> Arc<Discovery> {
    let config: DiscoveryConfig = serde_yaml_ng::from_str("{ file: { path: /nowhere/eps.yaml } }").unwrap();
    Discovery::new("c", &config, None, metrics)
}

fn counted(metrics: &Metrics, result: &str) -> String {
    let text = String::from_utf8(metrics.render()).unwrap();
    let series = format!("weft_discovery_updates_total{{cluster=\"c\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .unwrap_or("absent")
        .to_string()
}

#[test]
fn a_failed_look_keeps_the_last_set_and_every_look_is_counted() {
    let metrics = Metrics::new().unwrap();
    let discovery = file_discovery(&metrics);
    let shared = &discovery.shared;
    let mut schedule = RefreshSchedule::new(RefreshConfig {
        refresh: Duration::from_secs(5),
        min_refresh: Duration::from_secs(1),
    });
    assert!(discovery.published().endpoints.is_none());
    assert_eq!(discovery.status().state, "starting");

    shared.report(Err("no such file".into()), None, &mut schedule);
    assert!(discovery.published().endpoints.is_none());
    let status = discovery.status();
    assert_eq!((status.state, status.last_result), ("failing", Some("error")));
    assert!(status.last_success.is_none());

    let mut rx = discovery.subscribe();
    shared.report(Ok(vec![spec(2), spec(1), spec(2)]), None, &mut schedule);
    assert!(rx.has_changed().unwrap());
    let set = rx.borrow_and_update().endpoints.clone().unwrap();
    assert_eq!(&*set, &[spec(1), spec(2)], "sorted, duplicates once");

    shared.report(Ok(vec![spec(1), spec(2)]), None, &mut schedule);
    assert!(!rx.has_changed().unwrap(), "the same set is not published again");
    shared.report(Err("invalid".into()), None, &mut schedule);
    assert_eq!(
        discovery.published().endpoints.unwrap().len(),
        2,
        "the last good set stays"
    );
    let status = discovery.status();
    assert_eq!(
        (status.state, status.last_error.as_deref()),
        ("failing", Some("invalid"))
    );
    assert!(status.last_success.is_some());

    assert_eq!(counted(&metrics, "ok"), "1");
    assert_eq!(counted(&metrics, "unchanged"), "1");
    assert_eq!(counted(&metrics, "error"), "2");
    assert_eq!(discovery.source().as_ref(), "file:/nowhere/eps.yaml");
}

#[test]
fn a_reload_keeps_the_discovery_only_when_its_block_is_unchanged() {
    let metrics = Metrics::new().unwrap();
    let cluster = |text: &str| -> ClusterConfig { serde_yaml_ng::from_str(text).unwrap() };
    let dns = "{ name: c, discovery: { dns: { name: web.test, port: 80 } } }";
    let config = cluster(dns);
    let resolver = ResolverConfig {
        servers: vec!["127.0.0.1:53".parse().unwrap()],
    };
    let discovery = Discovery::new("c", config.discovery.as_ref().unwrap(), Some(&resolver), &metrics);
    assert!(discovery.serves(&config, Some(&resolver)));
    // Other cluster keys may change; the discovery block, name and resolver may not.
    assert!(discovery.serves(
        &cluster(&dns.replace("{ name: c,", "{ name: c, lb: random,")),
        Some(&resolver)
    ));
    assert!(!discovery.serves(&cluster(&dns.replace("port: 80", "port: 81")), Some(&resolver)));
    assert!(!discovery.serves(&cluster(&dns.replace("name: c,", "name: d,")), Some(&resolver)));
    assert!(!discovery.serves(&config, None));
}
