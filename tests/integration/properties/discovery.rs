//! What discovery reads from outside: endpoints files any controller writes,
//! DNS answers and the EndpointSlices the Kubernetes API serves. An
//! endpoints file gives exactly the endpoints it lists or errors naming the
//! file; a DNS answer gives exactly its A and AAAA addresses on the port,
//! with their shortest TTL, or errors naming the name (also when its bytes
//! were damaged); a set of slices gives exactly the addresses of endpoints
//! that take requests on the configured port; none ever panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use hickory_resolver::proto::op::{Message, OpCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME};
use hickory_resolver::proto::rr::{Name, RData, Record};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use proptest::prelude::*;
use tokio::time::Duration;
use weft::cluster::discovery::answer_endpoints;
use weft::config::discovery::{parse_endpoints_file, DnsDiscovery, KubernetesPort};

use super::cases;

const FILE: &str = "/etc/weft/endpoints.yaml";

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u16; 8]>().prop_map(|s| IpAddr::V6(Ipv6Addr::from(s))),
    ]
}

/// (address, zone, weight) as a file states them.
fn listed() -> impl Strategy<Value = (SocketAddr, Option<String>, u32)> {
    (ip(), any::<u16>(), prop::option::of("[a-z][a-z0-9-]{0,8}"), 1u32..1000)
        .prop_map(|(ip, port, zone, weight)| (SocketAddr::new(ip, port), zone, weight))
}

/// The file as YAML (flow style, quoted addresses) or as JSON.
fn written(endpoints: &[(SocketAddr, Option<String>, u32)], json: bool) -> String {
    let items: Vec<String> = endpoints
        .iter()
        .map(|(address, zone, weight)| {
            let zone = zone
                .as_ref()
                .map(|z| format!(", \"zone\": \"{z}\""))
                .unwrap_or_default();
            format!("{{ \"address\": \"{address}\"{zone}, \"weight\": {weight} }}")
        })
        .collect();
    if json {
        format!("{{ \"endpoints\": [{}] }}", items.join(", "))
    } else {
        format!(
            "endpoints:\n{}",
            items.iter().map(|i| format!("  - {i}\n")).collect::<String>()
        )
    }
}

fn condition() -> impl Strategy<Value = Option<bool>> {
    prop::option::of(any::<bool>())
}

/// An endpoint with one or two addresses, some not IPs at all.
fn endpoint() -> impl Strategy<Value = Endpoint> {
    let address = prop_oneof![ip().prop_map(|ip| ip.to_string()), "[a-z.:0-9]{0,12}"];
    (
        prop::collection::vec(address, 1..3),
        (condition(), condition(), condition()),
        prop::option::of("zone-[ab]"),
    )
        .prop_map(|(addresses, (ready, serving, terminating), zone)| Endpoint {
            addresses,
            conditions: Some(EndpointConditions {
                ready,
                serving,
                terminating,
            }),
            zone,
            ..Endpoint::default()
        })
}

/// A slice of any address type, naming `http` or not among its ports.
fn slice() -> impl Strategy<Value = EndpointSlice> {
    let port = (prop::sample::select(vec!["http", "metrics", ""]), 0i32..70000);
    (
        prop::sample::select(vec!["IPv4", "IPv6", "FQDN"]),
        prop::option::of(prop::collection::vec(port, 0..3)),
        prop::option::of(prop::collection::vec(endpoint(), 0..4)),
    )
        .prop_map(|(address_type, ports, endpoints)| EndpointSlice {
            address_type: address_type.to_string(),
            ports: ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|(name, port)| EndpointPort {
                        name: Some(name.to_string()).filter(|n| !n.is_empty()),
                        port: Some(port),
                        ..EndpointPort::default()
                    })
                    .collect()
            }),
            endpoints,
            ..EndpointSlice::default()
        })
}

/// The model: the first port named `name` on a slice (if a valid one).
fn named_port(slice: &EndpointSlice, name: &str) -> Option<u16> {
    let port = slice.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name))?;
    u16::try_from(port.port?).ok()
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn an_endpoints_file_gives_what_it_lists(endpoints in prop::collection::vec(listed(), 0..6), json in any::<bool>()) {
        let parsed = parse_endpoints_file(Path::new(FILE), &written(&endpoints, json)).unwrap();
        let got: Vec<_> = parsed.into_iter().map(|e| (e.address, e.zone, e.weight)).collect();
        prop_assert_eq!(got, endpoints);
    }

    #[test]
    fn any_endpoints_file_parses_or_names_the_file(text in prop_oneof![
        any::<String>(),
        "(endpoints:|  - |\\{ address: |127\\.0\\.0\\.1:80|\\[::1\\]:8080|zone: |weight: |0|-1|\\}|\\n|, | ){0,24}",
    ]) {
        match parse_endpoints_file(Path::new(FILE), &text) {
            Ok(endpoints) => prop_assert!(endpoints.iter().all(|e| e.weight >= 1)),
            Err(errors) => {
                prop_assert!(!errors.0.is_empty());
                for e in &errors.0 {
                    prop_assert_eq!(e.file.as_path(), Path::new(FILE));
                    prop_assert!(!e.message.is_empty());
                }
            }
        }
    }

    #[test]
    fn slices_give_the_addresses_that_take_requests(slices in prop::collection::vec(slice(), 0..4)) {
        let mut expected = Vec::new();
        let (mut populated, mut with_port) = (false, false);
        for slice in &slices {
            let endpoints = slice.endpoints.clone().unwrap_or_default();
            populated |= !endpoints.is_empty();
            let Some(port) = named_port(slice, "http").filter(|_| slice.address_type != "FQDN") else { continue };
            with_port |= !endpoints.is_empty();
            for e in &endpoints {
                let c = e.conditions.clone().unwrap_or_default();
                if c.ready.unwrap_or(true) && c.serving.unwrap_or(true) && !c.terminating.unwrap_or(false) {
                    for a in e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                        expected.push((SocketAddr::new(a, port), e.zone.clone()));
                    }
                }
            }
        }
        let got = weft::cluster::discovery::ready_endpoints(slices.iter(), &KubernetesPort::Name("http".into()));
        if populated && !with_port {
            prop_assert!(got.is_err());
        } else {
            let got: Vec<_> = got.unwrap().into_iter().map(|e| (e.address, e.zone)).collect();
            prop_assert_eq!(got, expected);
        }
    }
}

const DNS_NAME: &str = "web.weft.test.";

/// A record of an answer: an address (A or AAAA) or a CNAME, with a TTL.
fn dns_record() -> impl Strategy<Value = Record> {
    (prop::option::of(ip()), 0u32..100_000).prop_map(|(ip, ttl)| {
        let data = match ip {
            Some(IpAddr::V4(v4)) => RData::A(A(v4)),
            Some(IpAddr::V6(v6)) => RData::AAAA(AAAA(v6)),
            None => RData::CNAME(CNAME(Name::from_ascii("other.weft.test.").unwrap())),
        };
        Record::from_rdata(Name::from_ascii(DNS_NAME).unwrap(), ttl, data)
    })
}

fn dns_discovery(port: u16) -> DnsDiscovery {
    DnsDiscovery {
        name: DNS_NAME.into(),
        port,
        refresh: Duration::from_secs(5),
        min_refresh: Duration::from_secs(1),
        zone: Some("zone-a".into()),
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn a_dns_answer_gives_its_addresses_on_the_port_and_their_shortest_ttl(
        answers in prop::collection::vec(dns_record(), 0..6),
        port in any::<u16>(),
    ) {
        let addresses: Vec<_> = answers.iter().filter_map(|r| r.data.ip_addr().map(|ip| (ip, r.ttl))).collect();
        match answer_endpoints(&answers, &dns_discovery(port)) {
            Ok((specs, ttl)) => {
                let got: Vec<_> = specs.iter().map(|e| (e.address, e.zone.as_deref(), e.weight)).collect();
                let expected: Vec<_> = addresses.iter().map(|(ip, _)| (SocketAddr::new(*ip, port), Some("zone-a"), 1)).collect();
                prop_assert_eq!(got, expected);
                let shortest = addresses.iter().map(|(_, t)| *t).min().map(|t| Duration::from_secs(u64::from(t)));
                prop_assert_eq!(ttl, shortest);
            }
            Err(e) => {
                prop_assert!(addresses.is_empty());
                prop_assert!(e.contains(DNS_NAME), "{}", e);
            }
        }
    }

    #[test]
    fn a_damaged_dns_message_gives_addresses_or_an_error(
        answers in prop::collection::vec(dns_record(), 0..6),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        let mut message = Message::response(7, OpCode::Query);
        message.add_answers(answers);
        let mut bytes = message.to_vec().unwrap();
        for (at, byte) in damage {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        if let Ok(read) = Message::from_vec(&bytes) {
            let addresses = read.answers.iter().filter(|r| r.data.ip_addr().is_some()).count();
            match answer_endpoints(&read.answers, &dns_discovery(80)) {
                Ok((specs, _)) => prop_assert_eq!(specs.len(), addresses),
                Err(_) => prop_assert_eq!(addresses, 0),
            }
        }
    }
}
