//! The second parser: where each HTTP/1.1 request in a byte stream ends,
//! decided by `httparse` (request heads, chunk-size lines, trailer sections)
//! and RFC 9112 section 6 for the message body length, written here from the
//! RFC and independent of weft and hyper.

/// A request as the model reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Why the model stops reading a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The last request ends the connection (`Connection: close`, or a
    /// request with both `Transfer-Encoding` and `Content-Length`, after
    /// which RFC 9112 section 6.1 says the server MUST close).
    Closed,
    /// The bytes after the last request are not a valid request: a server
    /// must refuse them (400) and close.
    Invalid,
    /// The bytes run out in the middle of a request.
    Incomplete,
}

/// The requests a server reading `bytes` must see, in order, and why it
/// stops.
pub fn read(bytes: &[u8]) -> (Vec<Request>, End) {
    let mut requests = Vec::new();
    let mut at = 0;
    loop {
        if at == bytes.len() {
            return (requests, End::Incomplete);
        }
        match read_one(&bytes[at..]) {
            Ok((request, used, close)) => {
                requests.push(request);
                at += used;
                if close {
                    return (requests, End::Closed);
                }
            }
            Err(end) => return (requests, end),
        }
    }
}

/// How the body of a request is delimited (RFC 9112 section 6.3).
enum Framing {
    Length(u64),
    Chunked,
}

/// One request from the start of `bytes`: the request, the bytes it takes,
/// and whether the connection must close after it.
fn read_one(bytes: &[u8]) -> Result<(Request, usize, bool), End> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Request::new(&mut headers);
    let head_len = match head.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(End::Incomplete),
        Err(_) => return Err(End::Invalid),
    };
    let values = |name: &str| -> Vec<&[u8]> {
        head.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    let transfer_encoding = values("transfer-encoding");
    let content_length = values("content-length");
    let http11 = head.version == Some(1);
    let framing = if !transfer_encoding.is_empty() {
        // Section 6.1: HTTP/1.0 with Transfer-Encoding is faulty framing;
        // chunked must be the final coding of a request, else 400.
        let codings = list(&transfer_encoding).ok_or(End::Invalid)?;
        match codings.last() {
            Some(last) if http11 && last.eq_ignore_ascii_case("chunked") => Framing::Chunked,
            _ => return Err(End::Invalid),
        }
    } else if !content_length.is_empty() {
        // Section 6.3 item 5: a list of identical valid values is that value;
        // anything else is invalid.
        let lengths = list(&content_length).ok_or(End::Invalid)?;
        let mut parsed = lengths.iter().map(|l| decimal(l));
        let first = parsed.next().flatten().ok_or(End::Invalid)?;
        if !parsed.all(|l| l == Some(first)) {
            return Err(End::Invalid);
        }
        Framing::Length(first)
    } else {
        Framing::Length(0)
    };
    let connection = list(&values("connection")).unwrap_or_default();
    let close = !transfer_encoding.is_empty() && !content_length.is_empty()
        || connection.iter().any(|t| t.eq_ignore_ascii_case("close"))
        || !http11 && !connection.iter().any(|t| t.eq_ignore_ascii_case("keep-alive"));
    let rest = &bytes[head_len..];
    let (body, body_len) = match framing {
        Framing::Length(n) => {
            let n = usize::try_from(n).map_err(|_| End::Incomplete)?;
            if rest.len() < n {
                return Err(End::Incomplete);
            }
            (rest[..n].to_vec(), n)
        }
        Framing::Chunked => chunked(rest)?,
    };
    let request = Request {
        method: head.method.unwrap_or_default().to_string(),
        path: head.path.unwrap_or_default().to_string(),
        body,
    };
    Ok((request, head_len + body_len, close))
}

/// The elements of a comma-separated list spread over several field lines
/// (RFC 9110 section 5.6.1: empty elements are ignored); `None` when a value
/// is not text.
fn list(lines: &[&[u8]]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for line in lines {
        let text = std::str::from_utf8(line).ok()?;
        out.extend(
            text.split(',')
                .map(|e| e.trim_matches([' ', '\t']))
                .filter(|e| !e.is_empty())
                .map(str::to_string),
        );
    }
    Some(out)
}

/// `1*DIGIT` as a u64.
fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A chunked body (RFC 9112 section 7.1): the decoded content and the bytes
/// it takes, trailer section included.
fn chunked(bytes: &[u8]) -> Result<(Vec<u8>, usize), End> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (line, size) = match httparse::parse_chunk_size(&bytes[at..]) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Err(End::Incomplete),
            Err(_) => return Err(End::Invalid),
        };
        at += line;
        if size == 0 {
            let mut trailers = [httparse::EMPTY_HEADER; 32];
            return match httparse::parse_headers(&bytes[at..], &mut trailers) {
                Ok(httparse::Status::Complete((n, _))) => Ok((body, at + n)),
                Ok(httparse::Status::Partial) => Err(End::Incomplete),
                Err(_) => Err(End::Invalid),
            };
        }
        let size = usize::try_from(size).map_err(|_| End::Incomplete)?;
        let data = bytes.get(at..at + size).ok_or(End::Incomplete)?;
        body.extend_from_slice(data);
        at += size;
        match bytes.get(at..at + 2) {
            Some(b"\r\n") => at += 2,
            Some(_) => return Err(End::Invalid),
            None if bytes[at..].iter().all(|b| *b == b'\r') => return Err(End::Incomplete),
            None => return Err(End::Invalid),
        }
    }
}

#[test]
fn the_model_reads_the_rfc_examples() {
    let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: x\r\n\
Transfer-Encoding: gzip, chunked\r\n\r\n3;ext=1\r\nxyz\r\n0\r\nT: v\r\n\r\n\
GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (requests, end) = read(stream);
    let seen: Vec<(&str, &[u8])> = requests.iter().map(|r| (r.path.as_str(), &r.body[..])).collect();
    assert_eq!(seen, [("/a", &b"abc"[..]), ("/b", b"xyz"), ("/c", b"")]);
    assert_eq!(end, End::Closed);
    let both =
        b"POST /a HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
    assert_eq!(read(both).0.len(), 1);
    assert_eq!(read(both).1, End::Closed);
    for invalid in [
        &b"POST /a HTTP/1.1\r\nContent-Length: 2, 3\r\n\r\nab"[..],
        b"POST /a HTTP/1.1\r\nContent-Length: +2\r\n\r\nab",
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n",
    ] {
        assert_eq!(
            read(invalid),
            (vec![], End::Invalid),
            "{}",
            String::from_utf8_lossy(invalid)
        );
    }
    let same = b"POST /a HTTP/1.1\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nab";
    assert_eq!(read(same).0[0].body, b"ab");
    assert_eq!(
        read(b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nab").1,
        End::Incomplete
    );
}
