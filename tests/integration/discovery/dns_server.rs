//! A real authoritative DNS server (hickory-server, UDP on 127.0.0.1) for
//! the zone `weft.test.`, whose A and AAAA records a test replaces while
//! weft resolves them, and which a test can stop and start again on the
//! same port (a DNS outage: nothing answers there).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_server::proto::rr::rdata::{A, AAAA, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use tokio::net::UdpSocket;

pub const ZONE: &str = "weft.test.";

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    server: Option<Server<Catalog>>,
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

impl DnsServer {
    pub async fn start() -> Self {
        let origin = name(ZONE);
        let soa = SOA::new(name("ns.weft.test."), name("admin.weft.test."), 1, 60, 60, 60, 0);
        let mut soa_set = RecordSet::new(origin.clone(), RecordType::SOA, 1);
        soa_set.insert(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
        let records = BTreeMap::from([(RrKey::new(origin.clone().into(), RecordType::SOA), soa_set)]);
        let zone = InMemoryZoneHandler::new(origin, records, ZoneType::Primary, AxfrPolicy::Deny).unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(zone);
        let server = Some(serve(&zone, socket));
        Self { addr, zone, server }
    }

    /// Makes `host` (in the zone) resolve to exactly `ips`, with `ttl` seconds.
    pub async fn set(&self, host: &str, ips: &[IpAddr], ttl: u32) {
        let owner = name(&format!("{host}.{ZONE}"));
        let mut records = self.zone.records_mut().await;
        for record_type in [RecordType::A, RecordType::AAAA] {
            let mut set = RecordSet::with_ttl(owner.clone(), record_type, ttl);
            for ip in ips {
                match (ip, record_type) {
                    (IpAddr::V4(v4), RecordType::A) => set.add_rdata(RData::A(A(*v4))),
                    (IpAddr::V6(v6), RecordType::AAAA) => set.add_rdata(RData::AAAA(AAAA(*v6))),
                    _ => false,
                };
            }
            let key = RrKey::new(owner.clone().into(), record_type);
            if set.is_empty() {
                records.remove(&key);
            } else {
                records.insert(key, Arc::new(set));
            }
        }
    }

    /// Stops answering: the port is closed until [`DnsServer::restart`].
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.shutdown_gracefully().await.unwrap();
        }
    }

    /// Answers again, on the same address, with the records as they are now.
    pub async fn restart(&mut self) {
        let socket = UdpSocket::bind(self.addr).await.unwrap();
        self.server = Some(serve(&self.zone, socket));
    }
}

fn serve(zone: &Arc<InMemoryZoneHandler>, socket: UdpSocket) -> Server<Catalog> {
    let mut catalog = Catalog::new();
    let handler: Arc<dyn ZoneHandler> = zone.clone();
    catalog.upsert(LowerName::from(name(ZONE)), vec![handler]);
    let mut server = Server::new(catalog);
    server.register_socket(socket);
    server
}
