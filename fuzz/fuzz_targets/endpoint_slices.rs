//! EndpointSlices as the Kubernetes API might send them (any JSON that
//! deserializes): the endpoints that take requests, each on a port some
//! slice names, or an error; never a panic.
#![no_main]

use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;
use weft::config::discovery::KubernetesPort;

fuzz_target!(|data: &[u8]| {
    let Ok(slices) = serde_json::from_slice::<Vec<EndpointSlice>>(data) else {
        return;
    };
    for port in [KubernetesPort::Name("http".into()), KubernetesPort::Number(8080)] {
        if let Ok(endpoints) = weft::cluster::discovery::ready_endpoints(slices.iter(), &port) {
            let addresses: usize = slices
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .map(|e| e.addresses.len())
                .sum();
            assert!(endpoints.len() <= addresses);
        }
    }
});
