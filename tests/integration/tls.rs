//! TLS and mTLS on listeners and to upstreams, with throwaway certificates
//! made by rcgen.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::support::*;

/// A CA that signs leaf certificates into PEM files.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes `<name>.pem` and `<name>.key` into `dir`; returns their paths.
    pub fn leaf(&self, dir: &Path, name: &str, cn: &str, uri: Option<&str>) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        if let Some(uri) = uri {
            params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).unwrap();
        path
    }
}

/// The certificate a new TLS connection to `addr` is served.
pub async fn served_cn(addr: std::net::SocketAddr, ca: &Path) -> String {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(ca, None, &[])));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    weft::tls::PeerIdentity::from_der(&der).unwrap().id
}

fn tls_listener(tls: &str, routes: &str, clusters: &str) -> String {
    config(
        &format!("  - name: secure\n    address: 127.0.0.1:0\n    tls: {tls}\n    routes:\n{routes}"),
        clusters,
    )
}

#[tokio::test]
async fn http1_and_http2_over_tls_with_and_without_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test-ca");
    ca.leaf(dir.path(), "server", "server-1", None);
    let ca_path = ca.write(dir.path(), "ca.pem");
    let upstream = Upstream::echo_headers().await;
    let yaml = tls_listener(
        "{ cert: server.pem, key: server.key }",
        "      - { name: all, cluster: app }",
        &format!("  - {{ name: app, endpoints: [ {{ address: {} }} ] }}", upstream.addr),
    );
    let app = start_in(dir.path(), &yaml).await;
    let port = app.listener_addr("secure").await.unwrap().port();
    let url = format!("https://localhost:{port}/x");
    let no_alpn: &[&[u8]] = &[];
    for (http2, alpn, version) in [
        (false, &[&b"http/1.1"[..]][..], http::Version::HTTP_11),
        (true, &[&b"h2"[..]][..], http::Version::HTTP_2),
        // Without ALPN the first bytes decide, as on plain text.
        (false, no_alpn, http::Version::HTTP_11),
        (true, no_alpn, http::Version::HTTP_2),
    ] {
        let client = https_client(tls_client_config(&ca_path, None, alpn), http2);
        let response = client
            .request(Request::get(&url).body(full("")).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), version);
        let body = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
        assert!(!body.contains("x-forwarded-client-cert"), "{body}");
    }
}

#[tokio::test]
async fn mtls_listener_verifies_clients_and_passes_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("mesh-ca");
    let other = Ca::new("other-ca");
    ca.leaf(dir.path(), "server", "server-1", None);
    let spiffe = "spiffe://cluster.local/ns/x/sa/y";
    let (good_cert, good_key) = ca.leaf(dir.path(), "client", "client-a", Some(spiffe));
    let (bad_cert, bad_key) = other.leaf(dir.path(), "stranger", "client-b", None);
    let ca_path = ca.write(dir.path(), "ca.pem");
    let upstream = Upstream::echo_headers().await;
    let yaml = tls_listener(
        "{ cert: server.pem, key: server.key, client_ca: ca.pem, require_client_cert: true }",
        &format!("      - {{ name: trusted, match: {{ client_identity: {{ exact: \"{spiffe}\" }} }}, cluster: app }}\n      - {{ name: other, direct_response: {{ status: 403, body: denied }} }}"),
        &format!("  - {{ name: app, endpoints: [ {{ address: {} }} ] }}", upstream.addr),
    );
    let app = start_in(dir.path(), &yaml).await;
    let port = app.listener_addr("secure").await.unwrap().port();
    let url = format!("https://localhost:{port}/");

    let good = https_client(
        tls_client_config(&ca_path, Some((&good_cert, &good_key)), &[b"h2"]),
        true,
    );
    let req = Request::get(&url)
        .header("x-forwarded-client-cert", "forged")
        .body(full(""))
        .unwrap();
    let response = good.request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let xfcc = body
        .lines()
        .find(|l| l.starts_with("x-forwarded-client-cert: "))
        .expect(&body);
    assert!(xfcc.contains("Hash="), "{xfcc}");
    assert!(xfcc.contains("Subject=\"CN=client-a\""), "{xfcc}");
    assert!(xfcc.ends_with(&format!(";URI={spiffe}")), "{xfcc}");
    assert!(!body.contains("forged"), "{body}");

    let none = https_client(tls_client_config(&ca_path, None, &[b"h2"]), true);
    assert!(
        none.request(Request::get(&url).body(full("")).unwrap()).await.is_err(),
        "no client cert must fail"
    );
    let stranger = https_client(tls_client_config(&ca_path, Some((&bad_cert, &bad_key)), &[b"h2"]), true);
    assert!(
        stranger
            .request(Request::get(&url).body(full("")).unwrap())
            .await
            .is_err(),
        "foreign CA must fail"
    );
}

#[tokio::test]
async fn optional_client_cert_routes_by_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("mesh-ca");
    ca.leaf(dir.path(), "server", "server-1", None);
    let ca_path = ca.write(dir.path(), "ca.pem");
    let yaml = tls_listener(
        "{ cert: server.pem, key: server.key, client_ca: ca.pem }",
        "      - { name: known, match: { client_identity: { prefix: client- } }, direct_response: { status: 200, body: known } }\n      - { name: anonymous, direct_response: { status: 200, body: anonymous } }",
        "  []",
    );
    let app = start_in(dir.path(), &yaml).await;
    let url = format!(
        "https://localhost:{}/",
        app.listener_addr("secure").await.unwrap().port()
    );
    let (cert, key) = ca.leaf(dir.path(), "client", "client-a", None);
    let with = https_client(tls_client_config(&ca_path, Some((&cert, &key)), &[b"http/1.1"]), false);
    let without = https_client(tls_client_config(&ca_path, None, &[b"http/1.1"]), false);
    let body = |c: Client<_, TestBody>| {
        let url = url.clone();
        async move {
            let r = c.request(Request::get(&url).body(full("")).unwrap()).await.unwrap();
            String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
        }
    };
    assert_eq!(body(with).await, "known");
    assert_eq!(body(without).await, "anonymous");
}

#[tokio::test]
async fn rotated_certificate_is_served_to_new_connections_and_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("rotation-ca");
    ca.leaf(dir.path(), "server", "first", None);
    let ca_path = ca.write(dir.path(), "ca.pem");
    let yaml = tls_listener(
        "{ cert: server.pem, key: server.key }",
        "      - { name: ok, direct_response: { status: 200, body: ok } }",
        "  []",
    );
    let app = start_in(dir.path(), &yaml).await;
    let addr = app.listener_addr("secure").await.unwrap();
    assert_eq!(served_cn(addr, &ca_path).await, "first");
    ca.leaf(dir.path(), "server", "second", None);
    eventually("the rotated certificate is served", async || {
        let seen = served_cn(addr, &ca_path).await;
        if seen == "second" {
            Ok(())
        } else {
            Err(seen)
        }
    })
    .await;
    // A broken file keeps the last good certificate serving.
    std::fs::write(dir.path().join("server.pem"), "not a certificate").unwrap();
    let admin = format!("http://{}/metrics", app.admin_addr());
    let refused = "weft_tls_certificate_reloads_total{listener=\"secure\",result=\"error\"}";
    eventually("the broken certificate is refused", async || {
        metric(&get(&h1_client(), &admin).await.1, refused) >= 1.0
    })
    .await;
    assert_eq!(served_cn(addr, &ca_path).await, "second");
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("sni-ca");
    ca.leaf(dir.path(), "default", "default-cert", None);
    ca.leaf(dir.path(), "api", "api-cert", None);
    let ca_path = ca.write(dir.path(), "ca.pem");
    let yaml = tls_listener(
        "{ cert: default.pem, key: default.key, certificates: [ { cert: api.pem, key: api.key, server_names: [ localhost ] } ] }",
        "      - { name: ok, direct_response: { status: 200, body: ok } }",
        "  []",
    );
    let app = start_in(dir.path(), &yaml).await;
    let addr = app.listener_addr("secure").await.unwrap();
    assert_eq!(served_cn(addr, &ca_path).await, "api-cert");
}

/// A TLS upstream that requires a client certificate from `ca`.
async fn mtls_upstream(dir: &Path, ca: &Ca) -> std::net::SocketAddr {
    let (cert, key) = ca.leaf(dir, "upstream", "upstream", None);
    let ca_path = ca.write(dir, "upstream-ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            CertificateDer::pem_file_iter(&ca_path)
                .unwrap()
                .next()
                .unwrap()
                .unwrap(),
        )
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), weft::tls::crypto())
        .build()
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(weft::tls::crypto())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            CertificateDer::pem_file_iter(&cert)
                .unwrap()
                .map(Result::unwrap)
                .collect(),
            PrivateKeyDer::from_pem_file(&key).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let peer = tls.get_ref().1.peer_certificates().map(|c| c[0].clone());
                let who = peer
                    .and_then(|d| weft::tls::PeerIdentity::from_der(&d))
                    .map(|i| i.id)
                    .unwrap_or_default();
                let service = hyper::service::service_fn(move |_req| {
                    let who = who.clone();
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(full(format!("hello {who}")))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_mtls_for_http1_and_http2_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("upstream-ca");
    let upstream = mtls_upstream(dir.path(), &ca).await;
    ca.leaf(dir.path(), "weft-client", "weft-sidecar", None);
    let clusters = format!(
        "  - {{ name: h1, protocol: http1, tls: {{ ca: upstream-ca.pem, sni: localhost, cert: weft-client.pem, key: weft-client.key }}, endpoints: [ {{ address: {upstream} }} ] }}
  - {{ name: h2, protocol: http2, tls: {{ ca: upstream-ca.pem, cert: weft-client.pem, key: weft-client.key }}, endpoints: [ {{ address: {upstream} }} ] }}
  - {{ name: anonymous, protocol: http1, tls: {{ ca: upstream-ca.pem, sni: localhost }}, endpoints: [ {{ address: {upstream} }} ] }}"
    );
    let yaml = config(
        "  - name: public\n    address: 127.0.0.1:0\n    routes:\n      - { name: h1, match: { path_prefix: /h1 }, cluster: h1 }\n      - { name: h2, match: { path_prefix: /h2 }, cluster: h2 }\n      - { name: anon, cluster: anonymous }",
        &clusters,
    );
    let app = start_in(dir.path(), &yaml).await;
    let base = format!("http://{}", app.listener_addr("public").await.unwrap());
    let client = h1_client();
    assert_eq!(
        get(&client, &format!("{base}/h1")).await,
        (200, "hello weft-sidecar".into())
    );
    assert_eq!(
        get(&client, &format!("{base}/h2")).await,
        (200, "hello weft-sidecar".into())
    );
    let (status, _) = get(&client, &format!("{base}/anon")).await;
    assert!(
        status == 502 || status == 503,
        "without a client certificate the upstream refuses: {status}"
    );
}

#[test]
fn check_names_a_missing_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.yaml");
    let yaml = tls_listener(
        "{ cert: missing.pem, key: missing.key }",
        "      - { name: ok, direct_response: { status: 200 } }",
        "  []",
    );
    std::fs::write(&path, yaml).unwrap();
    let loaded = weft::config::load(&path).unwrap();
    let err = weft::snapshot::check(&loaded).unwrap_err().to_string();
    assert!(err.contains("weft.yaml:6: listeners[0].tls: "), "{err}");
    assert!(err.contains("missing.pem"), "{err}");
}
