//! SETTINGS and PING floods: a client sending them without end gets GOAWAY
//! ENHANCE_YOUR_CALM and its connection closed, whether it reads the
//! acknowledgements (weft would otherwise answer at line rate) or not (weft
//! would otherwise stop reading and hold the connection), counted in
//! `weft_downstream_h2_flood_total`; a normal client is served meanwhile.
//! The same holds under TLS. A client that pings with each of its requests,
//! or after each DATA frame of a download (as bandwidth estimators do), is
//! not a flood.

use std::sync::Arc;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;

use super::raw::*;
use super::{normal_client_served, weft_and_upstream, write_until_closed};
use crate::support::*;
use crate::tls::Ca;
use weft::policy::control_frames::BURST;

const FLOODS: &str = "weft_downstream_h2_flood_total{listener=\"public\"}";

/// 100,000 copies of `unit` (a frame), 1,000 per write.
fn flood(unit: Vec<u8>) -> impl Iterator<Item = Vec<u8>> {
    std::iter::repeat_n(unit.repeat(1000), 100)
}

/// A flood from a client that reads everything weft sends, and holds its
/// side open (so weft's close is weft's own).
async fn reading_flood_gets_goaway(unit: Vec<u8>) {
    let (weft, _upstream) = weft_and_upstream().await;
    assert_eq!(metric(&metrics(&weft).await, FLOODS), 0.0);
    let RawH2 { mut reader, writer } = RawH2::connect(weft.addr("public").await).await;
    let flooding = tokio::spawn(write_until_closed(writer, flood(unit)));
    let (ending, ()) = tokio::join!(ending_under(&mut reader, async {}), normal_client_served(&weft));
    assert_eq!(ending, Ending::GoAway(ENHANCE_YOUR_CALM));
    closed(&mut reader).await;
    flooding.abort();
    assert_eq!(metric(&metrics(&weft).await, FLOODS), 1.0);
    normal_client_served(&weft).await;
}

/// Resolves once weft has closed the connection after its GOAWAY (fails the
/// test if it sends another frame or keeps the connection open).
async fn closed(reader: &mut (impl tokio::io::AsyncRead + Unpin)) {
    if let Some(f) = read_frame_from(reader).await {
        panic!("a frame after the GOAWAY: {f:?}");
    }
}

#[tokio::test]
async fn ping_flood_gets_goaway_enhance_your_calm() {
    reading_flood_gets_goaway(frame(PING, 0, 0, &[0; 8])).await;
}

#[tokio::test]
async fn settings_flood_gets_goaway_enhance_your_calm() {
    reading_flood_gets_goaway(frame(SETTINGS, 0, 0, &[])).await;
}

#[tokio::test]
async fn ping_flood_over_tls_gets_goaway_enhance_your_calm() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("flood-ca");
    let (cert, key) = ca.leaf(certs.path(), "server", "server-1", None);
    let ca_path = ca.write(certs.path(), "ca.pem");
    let upstream = Upstream::text("ok").await;
    let yaml = config(
        &format!(
            "  - name: public\n    address: 127.0.0.1:0\n    tls: {{ cert: {}, key: {} }}\n    routes:\n      - {{ name: all, cluster: backend }}",
            cert.display(),
            key.display()
        ),
        &format!("  - {{ name: backend, endpoints: [ {{ address: {} }} ] }}", upstream.addr),
    );
    let weft = Weft::start(&yaml).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(&ca_path, None, &[b"h2"])));
    let tcp = tokio::net::TcpStream::connect(weft.addr("public").await).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    writer.write_all(&hello).await.unwrap();
    let attack = async move {
        for chunk in flood(frame(PING, 0, 0, &[0; 8])) {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // Held open: the end of the client's side would close it instead.
        std::future::pending::<()>().await;
    };
    assert_eq!(
        ending_under(&mut reader, attack).await,
        Ending::GoAway(ENHANCE_YOUR_CALM)
    );
    // The write half dropped closes nothing: the reader holds the stream.
    closed(&mut reader).await;
    assert_eq!(metric(&metrics(&weft).await, FLOODS), 1.0);
}

/// A flood from a client that reads nothing until its writes fail (64 MiB
/// of it: far beyond every socket buffer between the two, so they fail only
/// once weft has closed the connection); then what it had been sent ends
/// with the GOAWAY.
async fn unread_flood_gets_goaway(unit: Vec<u8>) {
    let (weft, _upstream) = weft_and_upstream().await;
    let RawH2 { mut reader, mut writer } = RawH2::connect(weft.addr("public").await).await;
    let batch = unit.repeat(1000);
    let attack = async {
        for _ in 0..(64 << 20) / batch.len() {
            if writer.write_all(&batch).await.is_err() {
                return;
            }
        }
        panic!("weft read 64 MiB of flood");
    };
    let (closed, ()) = tokio::join!(tokio::time::timeout(PATIENCE, attack), normal_client_served(&weft));
    closed.expect("weft neither closed the connection nor read the whole flood");
    assert_eq!(
        ending_under(&mut reader, async {}).await,
        Ending::GoAway(ENHANCE_YOUR_CALM)
    );
    assert_eq!(metric(&metrics(&weft).await, FLOODS), 1.0);
    normal_client_served(&weft).await;
}

#[tokio::test]
async fn ping_flood_unread_gets_goaway_enhance_your_calm() {
    unread_flood_gets_goaway(frame(PING, 0, 0, &[0; 8])).await;
}

#[tokio::test]
async fn settings_flood_unread_gets_goaway_enhance_your_calm() {
    unread_flood_gets_goaway(frame(SETTINGS, 0, 0, &[])).await;
}

#[tokio::test]
async fn a_ping_with_each_of_50_requests_is_not_a_flood() {
    let (weft, _upstream) = weft_and_upstream().await;
    let addr = weft.addr("public").await;
    let block = get_block(&addr.to_string(), "/modest");
    let mut h2 = RawH2::connect(addr).await;
    for i in 0..50u32 {
        let stream = 2 * i + 1;
        let mut bytes = frame(HEADERS, END_HEADERS | END_STREAM, stream, &block);
        bytes.extend(frame(PING, 0, 0, &u64::from(i).to_be_bytes()));
        h2.send(&bytes).await;
        // Its response ends and its PING is acknowledged.
        let (mut answered, mut acknowledged) = (false, false);
        while !(answered && acknowledged) {
            let f = h2.read_frame().await.expect("weft closed the connection");
            assert_ne!(f.kind, GOAWAY, "GOAWAY after {i} requests: {f:?}");
            answered |= (f.kind == DATA || f.kind == HEADERS) && f.stream == stream && f.flags & END_STREAM != 0;
            acknowledged |= f.kind == PING && f.flags & ACK != 0;
        }
    }
    assert_eq!(metric(&metrics(&weft).await, FLOODS), 0.0);
}

#[tokio::test]
async fn a_ping_after_each_data_frame_of_a_download_is_not_a_flood() {
    // 64 MiB: 4,096 DATA frames of 16 KiB, four times the burst; a download
    // faster than 30 s outruns what the refill alone would allow.
    let body = Bytes::from(vec![b'x'; 64 << 20]);
    let upstream = Upstream::start(move |_| {
        let body = body.clone();
        async move { http::Response::new(full(body)) }
    })
    .await;
    let weft = weft_in_front_of(upstream.addr, "http1").await;
    let addr = weft.addr("public").await;
    let mut h2 = RawH2::connect(addr).await;
    // Windows large enough that weft never waits for the client.
    let mut bytes = frame(SETTINGS, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]);
    bytes.extend(frame(WINDOW_UPDATE, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()));
    bytes.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_block(&addr.to_string(), "/download"),
    ));
    h2.send(&bytes).await;
    let (mut frames, mut received, mut acknowledged) = (0u32, 0usize, 0u32);
    loop {
        let f = h2.read_frame().await.expect("weft closed the connection");
        assert_ne!(f.kind, GOAWAY, "GOAWAY after {frames} DATA frames: {f:?}");
        acknowledged += u32::from(f.kind == PING && f.flags & ACK != 0);
        if f.kind == DATA {
            frames += 1;
            received += f.payload.len();
            if f.flags & END_STREAM != 0 {
                break;
            }
            // A failed write shows as the GOAWAY or the close read next.
            let ping = frame(PING, 0, 0, &u64::from(frames).to_be_bytes());
            let _ = h2.writer.write_all(&ping).await;
        }
    }
    assert_eq!(received, 64 << 20);
    assert!(frames > 2 * BURST, "{frames} DATA frames");
    // Every PING acknowledged: the connection is still open.
    while acknowledged < frames - 1 {
        let f = h2.read_frame().await.expect("weft closed the connection");
        assert_ne!(f.kind, GOAWAY, "GOAWAY after the download: {f:?}");
        acknowledged += u32::from(f.kind == PING && f.flags & ACK != 0);
    }
    assert_eq!(metric(&metrics(&weft).await, FLOODS), 0.0);
}
