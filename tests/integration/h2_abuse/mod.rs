//! HTTP/2 abuse from a raw client (see `raw`): rapid reset, CONTINUATION
//! flood, an HPACK bomb (a header list far beyond the limit from a small
//! block) and an oversized HPACK table end the abusive connection with
//! GOAWAY (ENHANCE_YOUR_CALM where h2 uses it); so do SETTINGS and PING
//! floods (`floods`). Meanwhile a normal client is served.

mod floods;
pub mod raw;

use tokio::io::AsyncWriteExt;

use crate::support::*;
use raw::*;

/// weft in front of one upstream that answers "ok".
async fn weft_and_upstream() -> (Weft, Upstream) {
    let upstream = Upstream::text("ok").await;
    let yaml = config(
        "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: all, match: { path_prefix: / }, cluster: backend }",
        &format!("  - name: backend\n    endpoints: [ {{ address: {} }} ]", upstream.addr),
    );
    (Weft::start(&yaml).await, upstream)
}

/// A normal HTTP/2 client's requests, each of which must be answered.
async fn normal_client_served(weft: &Weft) {
    let url = weft.url("public", "/normal").await;
    let client = h2_client();
    for _ in 0..10 {
        assert_eq!(get(&client, &url).await, (200, "ok".to_string()));
    }
}

/// Runs `attack` (given the connection's writer) on a raw connection while
/// a normal client is served, and returns how weft ended the connection.
async fn abuse<F>(weft: &Weft, attack: impl FnOnce(tokio::net::tcp::OwnedWriteHalf) -> F) -> Ending
where
    F: std::future::Future<Output = ()>,
{
    let RawH2 { mut reader, writer } = RawH2::connect(weft.addr("public").await).await;
    let (ending, ()) = tokio::join!(ending_under(&mut reader, attack(writer)), normal_client_served(weft));
    normal_client_served(weft).await;
    ending
}

/// Writes `chunks` until done or the server has closed, then holds the
/// connection open (dropping the writer would end the client's side, and
/// the server would close on that instead of on the abuse).
pub async fn write_until_closed(mut writer: tokio::net::tcp::OwnedWriteHalf, chunks: impl Iterator<Item = Vec<u8>>) {
    for chunk in chunks {
        if writer.write_all(&chunk).await.is_err() {
            break;
        }
    }
    std::future::pending::<()>().await;
    drop(writer);
}

/// A rapid reset attack on `authority`: 10,000 streams opened and
/// cancelled at once (HEADERS + RST_STREAM), 100 per write.
pub fn rapid_reset(authority: &str) -> impl Iterator<Item = Vec<u8>> {
    let block = get_block(authority, "/reset");
    (0..100u32).map(move |batch| {
        let mut out = Vec::new();
        for i in 0..100 {
            let stream = 2 * (batch * 100 + i) + 1;
            out.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
            out.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
        }
        out
    })
}

#[tokio::test]
async fn rapid_reset_gets_goaway_enhance_your_calm() {
    let (weft, _upstream) = weft_and_upstream().await;
    let authority = weft.addr("public").await.to_string();
    let ending = abuse(&weft, |w| write_until_closed(w, rapid_reset(&authority))).await;
    assert_eq!(ending, Ending::GoAway(ENHANCE_YOUR_CALM));
}

#[tokio::test]
async fn continuation_flood_gets_goaway_enhance_your_calm() {
    let (weft, _upstream) = weft_and_upstream().await;
    let authority = weft.addr("public").await.to_string();
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end
    // the block (10,000 of them, each one small header).
    let mut first = frame(HEADERS, END_STREAM, 1, &get_block(&authority, "/flood"));
    let mut one = Vec::new();
    literal("x-flood", "a", &mut one);
    first.extend(frame(CONTINUATION, 0, 1, &one));
    let rest = (0..100).map(|_| (0..100).flat_map(|_| frame(CONTINUATION, 0, 1, &one)).collect());
    let ending = abuse(&weft, |w| write_until_closed(w, std::iter::once(first).chain(rest))).await;
    assert_eq!(ending, Ending::GoAway(ENHANCE_YOUR_CALM));
}

#[tokio::test]
async fn hpack_bomb_gets_goaway_enhance_your_calm() {
    let (weft, _upstream) = weft_and_upstream().await;
    let authority = weft.addr("public").await.to_string();
    // One 4,000-byte field put in the dynamic table, then referenced by
    // index 2,000 times: a 6 KB frame that decodes to 8 MB of header list,
    // far beyond 4 x the 60 KiB limit.
    let mut block = get_block(&authority, "/bomb");
    block.push(0x40);
    hpack_int(0, 7, "x-bomb".len(), &mut block);
    block.extend_from_slice(b"x-bomb");
    hpack_int(0, 7, 4000, &mut block);
    block.extend(std::iter::repeat_n(b'a', 4000));
    // Index 62: the newest dynamic table entry.
    block.extend(std::iter::repeat_n(0x80 | 62, 2000));
    let bytes = frame(HEADERS, END_HEADERS | END_STREAM, 1, &block);
    let ending = abuse(&weft, |w| write_until_closed(w, std::iter::once(bytes))).await;
    assert_eq!(ending, Ending::GoAway(ENHANCE_YOUR_CALM));
}

#[tokio::test]
async fn hpack_table_beyond_the_setting_gets_goaway_protocol_error() {
    let (weft, _upstream) = weft_and_upstream().await;
    let authority = weft.addr("public").await.to_string();
    // A dynamic table size update (RFC 7541 §6.3) one byte beyond weft's
    // 4096-byte setting leads the block.
    let mut block = Vec::new();
    hpack_int(0x20, 5, 4097, &mut block);
    block.extend(get_block(&authority, "/table"));
    let bytes = frame(HEADERS, END_HEADERS | END_STREAM, 1, &block);
    let ending = abuse(&weft, |w| write_until_closed(w, std::iter::once(bytes))).await;
    // h2 answers any HPACK decoding error with PROTOCOL_ERROR.
    assert_eq!(ending, Ending::GoAway(PROTOCOL_ERROR));
}
