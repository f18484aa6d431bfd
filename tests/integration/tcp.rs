//! Raw TCP proxying with half-close.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test]
async fn tcp_listener_streams_both_ways_with_half_close() {
    // The upstream reads until the client's FIN, then answers and closes:
    // this only works if weft passes the half-close on.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
    });
    let yaml = format!(
        "admin: {{ address: 127.0.0.1:0 }}\nlisteners:\n  - {{ name: db, address: 127.0.0.1:0, protocol: tcp, cluster: db }}\nclusters:\n  - {{ name: db, protocol: tcp, endpoints: [ {{ address: {upstream_addr} }} ] }}\n"
    );
    let weft = Weft::start(&yaml).await;
    let mut client = tokio::net::TcpStream::connect(weft.addr("db").await).await.unwrap();
    client.write_all(&vec![7u8; 100_000]).await.unwrap();
    client.shutdown().await.unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "got 100000 bytes");
    server.await.unwrap();
    drop(client);
    // The connection is counted once and no longer open (bounded wait for
    // weft to notice the close).
    let text = eventually("the closed connection is no longer active", async || {
        let text = metrics(&weft).await;
        if metric(&text, "weft_downstream_connections_active{listener=\"db\"}") == 0.0 {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    assert!(
        text.contains("weft_downstream_connections_total{listener=\"db\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_connection_to_an_original_destination_listener_that_was_not_redirected_is_closed_and_counted() {
    let yaml = config(
        "  - { name: captured-tcp, address: 127.0.0.1:0, protocol: tcp, original_destination: true, cluster: passthrough }
  - { name: captured-http, address: 127.0.0.1:0, original_destination: true, routes: [ { name: all, cluster: passthrough } ] }",
        "  - { name: passthrough, type: original_destination }",
    );
    let weft = Weft::start(&yaml).await;
    for listener in ["captured-tcp", "captured-http"] {
        // Its original destination is the listener itself: forwarding would loop.
        let mut direct = tokio::net::TcpStream::connect(weft.addr(listener).await).await.unwrap();
        let _ = direct.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(PATIENCE, direct.read_to_end(&mut answer)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{listener} served it: {answer:?}");
        let series = format!("weft_original_destination_loops_total{{listener=\"{listener}\"}}");
        assert_eq!(metric(&metrics(&weft).await, &series), 1.0, "{listener}");
    }
}
