//! Kubernetes discovery: the ready endpoints of a Service's EndpointSlices
//! (`discovery.k8s.io/v1`, labelled `kubernetes.io/service-name`), kept
//! current by kube's watcher (list, then watch from the list's
//! resourceVersion; bookmarks move it on; a `410 Gone` re-lists).
//!
//! Guarantees:
//! - The set is the union over every slice of the Service: each address of
//!   each endpoint that is ready (`conditions.ready` true or absent), serving
//!   (`serving` true or absent) and not terminating, on the configured port
//!   (by name from the slice's `ports`, or the number itself), with the
//!   endpoint's `zone`. A terminating endpoint leaves the set: it gets no new
//!   requests and finishes the ones it has.
//! - A set is published only when whole: after a (re-)list has finished, and
//!   after each watch event.
//! - Credentials: `KUBECONFIG` (or `~/.kube/config`) when present, else the
//!   pod's service account, as `kube::Config::infer` finds them; the
//!   namespace defaults to the pod's own (or the kubeconfig context's).
//!   Before kube reads them (whole, and blocking), the service account's
//!   files (`token`, `ca.crt`, `namespace` under [`SERVICE_ACCOUNT_DIR`])
//!   must be regular files of at most [`MAX_CREDENTIAL_BYTES`] where they
//!   exist: a FIFO or a huge file there fails the connect attempt (counted,
//!   retried) instead of hanging discovery or filling memory.
//! - A failure (no credentials, API server unreachable, a watch that breaks,
//!   a port no slice has) keeps the last set, is counted and retried with
//!   backoff; the retry starts a new list, so the state reported is the API
//!   server's. An expired watch (`410 Gone`) is routine: the watcher
//!   re-lists at once and it is not counted as a failure.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::time::Duration;

use super::Shared;
use crate::cluster::endpoints::EndpointSpec;
use crate::config::discovery::{KubernetesDiscovery, KubernetesPort};
use crate::config::files;
use crate::policy::discovery::{RefreshConfig, RefreshSchedule};

/// Retries after a failure: from about half a second up to this.
const RETRY: RefreshConfig = RefreshConfig {
    refresh: Duration::from_secs(30),
    min_refresh: Duration::from_millis(500),
};

/// The HTTP status of an expired resourceVersion.
const GONE: u16 = 410;

/// Where Kubernetes mounts a pod's service account (kube reads this path).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The largest service-account file read (a token is a few KiB, a CA bundle rarely more).
pub const MAX_CREDENTIAL_BYTES: u64 = 1 << 20;

pub(super) async fn run(shared: Arc<Shared>, config: KubernetesDiscovery) {
    let mut schedule = RefreshSchedule::new(RETRY);
    let mut api = None;
    loop {
        let failure = match &api {
            Some(api) => watch(&shared, &config, api, &mut schedule).await,
            None => match connect(&config).await {
                Ok(connected) => watch(&shared, &config, api.insert(connected), &mut schedule).await,
                Err(e) => e,
            },
        };
        let step = shared.report(Err(failure), None, &mut schedule);
        tokio::time::sleep_until(step.next).await;
    }
}

/// The EndpointSlices API of the configured (or default) namespace.
async fn connect(config: &KubernetesDiscovery) -> Result<Api<EndpointSlice>, String> {
    // kube reads the kubeconfig and service-account files with blocking
    // calls: not on a worker thread.
    let handle = tokio::runtime::Handle::current();
    let inferred = tokio::task::spawn_blocking(move || {
        check_service_account(Path::new(SERVICE_ACCOUNT_DIR))?;
        handle
            .block_on(kube::Config::infer())
            .map_err(|e| format!("no Kubernetes credentials (in-cluster service account or KUBECONFIG): {e}"))
    })
    .await
    .map_err(|e| format!("reading Kubernetes credentials: {e}"))??;
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| inferred.default_namespace.clone());
    let client = Client::try_from(inferred).map_err(|e| format!("cannot build the Kubernetes client: {e}"))?;
    Ok(Api::namespaced(client, &namespace))
}

/// Refuses the service account in `dir` when one of its files that exists
/// is not a regular file of at most [`MAX_CREDENTIAL_BYTES`]; absent files
/// are kube's to report (a kubeconfig may be used instead). Blocking: call
/// it off the worker threads.
pub fn check_service_account(dir: &Path) -> Result<(), String> {
    for name in ["token", "ca.crt", "namespace"] {
        let path = dir.join(name);
        match files::read_regular(&path, MAX_CREDENTIAL_BYTES) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("service account file {}: {e}", path.display())),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Follows the Service's slices, publishing each whole set, until the
/// watch fails; returns why.
async fn watch(
    shared: &Shared,
    config: &KubernetesDiscovery,
    api: &Api<EndpointSlice>,
    schedule: &mut RefreshSchedule,
) -> String {
    let selector = format!("kubernetes.io/service-name={}", config.service);
    let events = watcher::watcher(api.clone(), watcher::Config::default().labels(&selector));
    let mut events = std::pin::pin!(events);
    let mut slices: HashMap<String, EndpointSlice> = HashMap::new();
    // A list in progress: replaces `slices` when it is done.
    let mut listing: Option<HashMap<String, EndpointSlice>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing = Some(HashMap::new()),
            Ok(Event::InitApply(slice)) => {
                if let Some(listing) = &mut listing {
                    listing.insert(name_of(&slice), slice);
                }
            }
            Ok(Event::InitDone) => {
                if let Some(listed) = listing.take() {
                    slices = listed;
                }
            }
            Ok(Event::Apply(slice)) => {
                slices.insert(name_of(&slice), slice);
            }
            Ok(Event::Delete(slice)) => {
                slices.remove(&name_of(&slice));
            }
            Err(watcher::Error::WatchError(status)) if status.code == GONE => {
                tracing::debug!(cluster = %shared.cluster, "EndpointSlice watch expired; re-listing");
                continue;
            }
            Err(e) => return e.to_string(),
        }
        if listing.is_none() {
            shared.report(ready_endpoints(slices.values(), &config.port), None, schedule);
        }
    }
    "the EndpointSlice watch ended".into()
}

fn name_of(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

/// Whether an endpoint may take new requests (the API's defaults: ready and
/// serving when absent, not terminating when absent).
fn takes_requests(endpoint: &Endpoint) -> bool {
    let conditions = endpoint.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    ready && serving && !terminating
}

/// The port of `slice`'s endpoints that `port` names, if the slice has it.
fn slice_port(slice: &EndpointSlice, port: &KubernetesPort) -> Option<u16> {
    match port {
        KubernetesPort::Number(n) => u16::try_from(*n).ok(),
        KubernetesPort::Name(name) => slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.port?).ok()),
    }
}

/// The endpoints `slices` offer on `port`; an error when some slice has
/// endpoints but none of those has the port (a misnamed port, not an
/// empty Service).
pub fn ready_endpoints<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    port: &KubernetesPort,
) -> Result<Vec<EndpointSpec>, String> {
    let mut specs = Vec::new();
    let (mut populated, mut with_port) = (0, 0);
    for slice in slices {
        let endpoints = slice.endpoints.as_deref().unwrap_or_default();
        populated += usize::from(!endpoints.is_empty());
        // FQDN slices name hosts, not addresses: nothing to connect to.
        let Some(number) = slice_port(slice, port).filter(|_| slice.address_type != "FQDN") else {
            continue;
        };
        with_port += usize::from(!endpoints.is_empty());
        for endpoint in endpoints.iter().filter(|e| takes_requests(e)) {
            let addresses = endpoint.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok());
            specs.extend(addresses.map(|ip| EndpointSpec {
                address: SocketAddr::new(ip, number),
                zone: endpoint.zone.clone(),
                weight: 1,
            }));
        }
    }
    if populated > 0 && with_port == 0 {
        return Err(format!("no EndpointSlice of the Service has port {port}"));
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};

    use super::*;

    fn endpoint(addresses: &[&str], zone: &str, ready: Option<bool>, terminating: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            zone: Some(zone.into()),
            conditions: Some(EndpointConditions {
                ready,
                serving: ready,
                terminating,
            }),
            ..Endpoint::default()
        }
    }

    fn slice(address_type: &str, ports: &[(&str, i32)], endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: address_type.into(),
            endpoints: Some(endpoints),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port)| EndpointPort {
                        name: Some(name.to_string()),
                        port: Some(*port),
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
            ..EndpointSlice::default()
        }
    }

    fn addresses(specs: &[EndpointSpec]) -> Vec<String> {
        let mut all: Vec<String> = specs.iter().map(|s| s.address.to_string()).collect();
        all.sort();
        all
    }

    #[test]
    fn ready_endpoints_of_every_slice_on_the_named_port() {
        let v4 = slice(
            "IPv4",
            &[("http", 8080), ("admin", 9000)],
            vec![
                endpoint(&["10.0.0.1", "10.0.0.2"], "zone-a", Some(true), None),
                endpoint(&["10.0.0.3"], "zone-b", None, None),
                endpoint(&["10.0.0.4"], "zone-b", Some(false), None),
                endpoint(&["10.0.0.5"], "zone-b", Some(true), Some(true)),
                endpoint(&["10.0.0.6"], "zone-b", Some(false), Some(true)),
            ],
        );
        let v6 = slice(
            "IPv6",
            &[("http", 8081)],
            vec![endpoint(&["fd00::1"], "zone-c", Some(true), Some(false))],
        );
        let fqdn = slice(
            "FQDN",
            &[("http", 80)],
            vec![endpoint(&["db.example"], "zone-c", None, None)],
        );
        let all = [v4, v6, fqdn];
        let found = ready_endpoints(all.iter(), &KubernetesPort::Name("http".into())).unwrap();
        assert_eq!(
            addresses(&found),
            ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080", "[fd00::1]:8081"]
        );
        let zone_of = |a: &str| found.iter().find(|s| s.address.to_string() == a).unwrap().zone.clone();
        assert_eq!(zone_of("10.0.0.3:8080").as_deref(), Some("zone-b"));
        assert_eq!(zone_of("[fd00::1]:8081").as_deref(), Some("zone-c"));

        let admin = ready_endpoints(all.iter(), &KubernetesPort::Name("admin".into())).unwrap();
        assert_eq!(addresses(&admin), ["10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000"]);
        let by_number = ready_endpoints(all[1..].iter(), &KubernetesPort::Number(7000)).unwrap();
        assert_eq!(addresses(&by_number), ["[fd00::1]:7000"]);
    }

    #[test]
    fn a_port_no_slice_has_is_an_error_but_an_empty_service_is_not() {
        let named = slice(
            "IPv4",
            &[("http", 8080)],
            vec![endpoint(&["10.0.0.1"], "a", None, None)],
        );
        assert!(ready_endpoints([&named].into_iter(), &KubernetesPort::Name("grpc".into())).is_err());
        let empty = EndpointSlice {
            address_type: "IPv4".into(),
            ..EndpointSlice::default()
        };
        let none = ready_endpoints([&empty].into_iter(), &KubernetesPort::Name("grpc".into())).unwrap();
        assert!(none.is_empty());
        assert!(ready_endpoints(std::iter::empty(), &KubernetesPort::Number(80))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn service_account_files_must_be_small_regular_files_where_they_exist() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            check_service_account(dir.path()),
            Ok(()),
            "absent files are kube's to report"
        );
        std::fs::write(dir.path().join("namespace"), "team-a").unwrap();
        std::fs::write(dir.path().join("token"), "a.b.c").unwrap();
        assert_eq!(check_service_account(dir.path()), Ok(()));
        let big = vec![b'a'; MAX_CREDENTIAL_BYTES as usize + 1];
        std::fs::write(dir.path().join("ca.crt"), big).unwrap();
        let refused = check_service_account(dir.path()).unwrap_err();
        assert!(
            refused.contains("ca.crt") && refused.contains("larger than"),
            "{refused}"
        );
        std::fs::remove_file(dir.path().join("ca.crt")).unwrap();
        // A FIFO nobody writes to: refused at once, not waited on.
        let fifo = std::ffi::CString::new(dir.path().join("token").as_os_str().as_encoded_bytes()).unwrap();
        std::fs::remove_file(dir.path().join("token")).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let refused = check_service_account(dir.path()).unwrap_err();
        assert!(
            refused.contains("token") && refused.contains("not a regular file"),
            "{refused}"
        );
    }
}
