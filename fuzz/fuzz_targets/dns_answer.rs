//! DNS discovery on any message bytes a name server might send: a message
//! hickory decodes gives exactly its A and AAAA addresses as endpoints on
//! the port, or an error naming the name when it has none; never a panic.
#![no_main]

use std::time::Duration;

use hickory_resolver::proto::op::Message;
use libfuzzer_sys::fuzz_target;
use weft::config::discovery::DnsDiscovery;

fuzz_target!(|bytes: &[u8]| {
    let Ok(message) = Message::from_vec(bytes) else {
        return;
    };
    let config = DnsDiscovery {
        name: "web.weft.test.".into(),
        port: 80,
        refresh: Duration::from_secs(5),
        min_refresh: Duration::from_secs(1),
        zone: None,
    };
    let addresses = message.answers.iter().filter(|r| r.data.ip_addr().is_some()).count();
    match weft::cluster::discovery::answer_endpoints(&message.answers, &config) {
        Ok((endpoints, _)) => {
            assert_eq!(endpoints.len(), addresses);
            assert!(endpoints.iter().all(|e| e.address.port() == 80));
        }
        Err(e) => {
            assert_eq!(addresses, 0);
            assert!(e.contains("web.weft.test."));
        }
    }
});
