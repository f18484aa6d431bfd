//! Generated HTTP/1.1 request streams: a few pipelined requests framed by
//! Content-Length, chunked, both, neither, or something that only looks like
//! one of them (duplicated or listed lengths, signs, odd codings, spaces
//! before the colon, obs-fold, bare LF), with bodies that hold more requests.
//! Every stream ends with `Connection: close`, so a server that reads it as
//! intended answers and closes.

use std::fmt;

use proptest::prelude::*;

/// Stands for the case number in paths, so one server can tell the cases
/// apart; replaced by [`Stream::bytes`] with as many digits.
const CASE: &str = "@@@@";

/// A request body that is itself a request: what a smuggler hides.
const HIDDEN: &str = "GET /@@@@/hidden HTTP/1.1\r\nHost: x\r\n\r\n";

#[derive(Clone)]
pub struct Stream {
    template: Vec<u8>,
    /// Every request uses only plain framing (one correct Content-Length,
    /// or `Transfer-Encoding: chunked` with well-formed chunks; CRLF line
    /// ends): a server must accept all of them.
    pub plain: bool,
}

impl Stream {
    pub fn bytes(&self, case: u32) -> Vec<u8> {
        let id = format!("{:04}", case % 10_000);
        let text = self.template.clone();
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            if text[i..].starts_with(CASE.as_bytes()) {
                out.extend_from_slice(id.as_bytes());
                i += CASE.len();
            } else {
                out.push(text[i]);
                i += 1;
            }
        }
        out
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plain={} {:?}", self.plain, String::from_utf8_lossy(&self.template))
    }
}

/// How a Content-Length value is written for a body of `n` bytes.
#[derive(Debug, Clone, Copy)]
enum Length {
    Exact,
    Off(i8),
    Plus,
    LeadingZeros,
    ListSame,
    ListDiffering,
    TrailingComma,
    Hex,
    Negative,
    Empty,
    SpaceInside,
    Overflowing,
}

impl Length {
    fn render(self, n: usize) -> String {
        match self {
            Length::Exact => n.to_string(),
            Length::Off(d) => (n as i64 + i64::from(d)).max(0).to_string(),
            Length::Plus => format!("+{n}"),
            Length::LeadingZeros => format!("00{n}"),
            Length::ListSame => format!("{n}, {n}"),
            Length::ListDiffering => format!("{n}, {}", n + 1),
            Length::TrailingComma => format!("{n},"),
            Length::Hex => format!("0x{n:x}"),
            Length::Negative => format!("-{n}"),
            Length::Empty => String::new(),
            Length::SpaceInside => format!("{n} {n}"),
            Length::Overflowing => "18446744073709551617".into(),
        }
    }
}

fn length() -> impl Strategy<Value = Length> {
    prop_oneof![
        6 => Just(Length::Exact),
        2 => (-2i8..=2).prop_map(Length::Off),
        1 => prop::sample::select(vec![
            Length::Plus,
            Length::LeadingZeros,
            Length::ListSame,
            Length::ListDiffering,
            Length::TrailingComma,
            Length::Hex,
            Length::Negative,
            Length::Empty,
            Length::SpaceInside,
            Length::Overflowing,
        ]),
    ]
}

/// Field names as written: the usual, other cases, a space or tab before the
/// colon (RFC 9112 section 5.1: must be refused), a look-alike.
fn field_name(name: &'static str) -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        8 => Just((name.to_string(), true)),
        1 => prop::sample::select(vec![
            name.to_ascii_lowercase(),
            name.to_ascii_uppercase(),
            format!("{name} "),
            format!("{name}\t"),
            name.replace('-', "_"),
            format!("X-{name}"),
        ])
        .prop_map(|n| (n, false)),
    ]
}

const CODINGS: &[&str] = &[
    "Chunked",
    "CHUNKED",
    "gzip, chunked",
    "gzip,chunked",
    "chunked, gzip",
    "identity",
    "xchunked",
    "chunked, chunked",
    ", chunked",
    "chunked,",
    "chunked\t",
    "\"chunked\"",
    "gzip,\r\n chunked",
];

/// One or two `Transfer-Encoding` values.
fn codings() -> impl Strategy<Value = (Vec<&'static str>, bool)> {
    prop_oneof![
        6 => Just((vec!["chunked"], true)),
        2 => prop::sample::select(CODINGS).prop_map(|c| (vec![c], false)),
        1 => (prop::sample::select(CODINGS), prop::sample::select(CODINGS)).prop_map(|(a, b)| (vec![a, b], false)),
        1 => Just((vec!["gzip", "chunked"], false)),
    ]
}

/// How chunks are written.
#[derive(Debug, Clone, Copy)]
enum ChunkStyle {
    Plain,
    Upper,
    LeadingZeros,
    Extension,
    SpaceBeforeExtension,
    LfInExtension,
    SizeOff(i8),
    BareLfAfterData,
    BareLfAfterSize,
    Trailers,
    TrailerWithBareLf,
    LastChunkExtension,
}

fn chunk_style() -> impl Strategy<Value = ChunkStyle> {
    use ChunkStyle::*;
    prop_oneof![
        4 => Just(Plain),
        2 => prop::sample::select(vec![Upper, LeadingZeros, Extension, Trailers, LastChunkExtension]),
        2 => prop::sample::select(vec![SpaceBeforeExtension, LfInExtension, BareLfAfterData, BareLfAfterSize, TrailerWithBareLf]),
        1 => (-1i8..=1).prop_map(SizeOff),
    ]
}

impl ChunkStyle {
    fn plain(self) -> bool {
        use ChunkStyle::*;
        // weft ends the connection after trailers (see `front::early_response`).
        matches!(
            self,
            Plain | Upper | LeadingZeros | Extension | LastChunkExtension | SizeOff(0)
        )
    }

    /// `body` in chunks of at most `piece` bytes.
    fn encode(self, body: &[u8], piece: usize) -> Vec<u8> {
        use ChunkStyle::*;
        let mut out = Vec::new();
        for chunk in body.chunks(piece.max(1)) {
            let size = match self {
                SizeOff(d) => (chunk.len() as i64 + i64::from(d)).max(1) as usize,
                _ => chunk.len(),
            };
            let line = match self {
                Upper => format!("{size:X}\r\n"),
                LeadingZeros => format!("000{size:x}\r\n"),
                Extension => format!("{size:x};name=\"va;l\"\r\n"),
                SpaceBeforeExtension => format!("{size:x} ;a=b\r\n"),
                LfInExtension => format!("{size:x};a\n\r\n"),
                BareLfAfterSize => format!("{size:x}\n"),
                _ => format!("{size:x}\r\n"),
            };
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(if matches!(self, BareLfAfterData) {
                b"\n"
            } else {
                b"\r\n"
            });
        }
        out.extend_from_slice(match self {
            Trailers => b"0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n",
            TrailerWithBareLf => b"0\r\nX-Trailer: 1\n\r\n",
            LastChunkExtension => b"0;last\r\n\r\n",
            _ => b"0\r\n\r\n",
        });
        out
    }
}

/// How the body is framed.
#[derive(Debug, Clone)]
enum Framing {
    None,
    Length(Vec<(String, bool, Length)>),
    Chunked((String, bool), (Vec<&'static str>, bool), ChunkStyle, usize),
    /// Content-Length first or second, then Transfer-Encoding.
    Both(Length, bool, (Vec<&'static str>, bool), ChunkStyle),
}

fn framing() -> impl Strategy<Value = Framing> {
    let lengths = prop::collection::vec((field_name("Content-Length"), length()), 1..3)
        .prop_map(|v| v.into_iter().map(|((n, plain), l)| (n, plain, l)).collect());
    prop_oneof![
        2 => Just(Framing::None),
        4 => lengths.prop_map(Framing::Length),
        4 => (field_name("Transfer-Encoding"), codings(), chunk_style(), 1..8usize)
            .prop_map(|(n, c, s, p)| Framing::Chunked(n, c, s, p)),
        2 => (length(), any::<bool>(), codings(), chunk_style()).prop_map(|(l, first, c, s)| Framing::Both(l, first, c, s)),
    ]
}

/// Other fields: ordinary ones, an obs-fold line (RFC 9112 section 5.2), a
/// field line starting with whitespace right after the request line.
fn extra() -> impl Strategy<Value = (Option<&'static str>, bool)> {
    prop_oneof![
        6 => Just((None, true)),
        2 => prop::sample::select(vec!["Accept: */*", "X-Empty:", "Connection: keep-alive"]).prop_map(|e| (Some(e), true)),
        1 => prop::sample::select(vec!["X-Fold: a\r\n b", "X-Fold: a\r\n\tContent-Length: 3", "Foo: bar\rContent-Length: 1"])
            .prop_map(|e| (Some(e), false)),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(prop::sample::select(b"ab0\r\n;".to_vec()), 0..12),
        1 => Just(HIDDEN.as_bytes().to_vec()),
        1 => Just(b"0\r\n\r\n".to_vec()),
    ]
}

/// One request: its bytes and whether its framing is plain.
fn request(index: usize) -> impl Strategy<Value = (Vec<u8>, bool)> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT"]);
    let version = prop_oneof![9 => Just("1.1"), 1 => Just("1.0")];
    (
        (method, version),
        framing(),
        body(),
        extra(),
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            move |((method, version), framing, body, (extra, extra_plain), extra_first, bare_lf)| {
                let mut fields: Vec<String> = vec!["Host: x".into()];
                // HTTP/1.0 closes after its response unless asked to keep alive.
                let mut plain = extra_plain && !bare_lf && version == "1.1";
                let mut content = Vec::new();
                match &framing {
                    Framing::None => {}
                    Framing::Length(lines) => {
                        plain &= lines.len() == 1;
                        for (name, name_plain, length) in lines {
                            plain &= *name_plain && matches!(length, Length::Exact);
                            fields.push(format!("{name}: {}", length.render(body.len())));
                        }
                        content = body.clone();
                    }
                    Framing::Chunked((name, name_plain), (codings, codings_plain), style, piece) => {
                        plain &= *name_plain && *codings_plain && style.plain();
                        fields.extend(codings.iter().map(|c| format!("{name}: {c}")));
                        content = style.encode(&body, *piece);
                    }
                    Framing::Both(length, cl_first, (codings, _), style) => {
                        plain = false;
                        content = style.encode(&body, 4);
                        let cl = format!("Content-Length: {}", length.render(content.len()));
                        let te = codings.iter().map(|c| format!("Transfer-Encoding: {c}"));
                        if *cl_first {
                            fields.push(cl);
                            fields.extend(te);
                        } else {
                            fields.extend(te);
                            fields.push(cl);
                        }
                    }
                }
                if let Some(extra) = extra {
                    let at = if extra_first { 0 } else { fields.len() };
                    fields.insert(at, extra.to_string());
                }
                let end = if bare_lf { "\n" } else { "\r\n" };
                let mut bytes = format!("{method} /{CASE}/r{index} HTTP/{version}{end}").into_bytes();
                for field in fields {
                    bytes.extend_from_slice(field.as_bytes());
                    bytes.extend_from_slice(end.as_bytes());
                }
                bytes.extend_from_slice(end.as_bytes());
                bytes.extend_from_slice(&content);
                (bytes, plain)
            },
        )
}

/// One to three requests, then the last one, which asks to close.
pub fn stream() -> impl Strategy<Value = Stream> {
    (1..4usize)
        .prop_flat_map(|n| (0..n).map(request).collect::<Vec<_>>())
        .prop_map(|requests| {
            let plain = requests.iter().all(|(_, plain)| *plain);
            let mut template: Vec<u8> = requests.into_iter().flat_map(|(bytes, _)| bytes).collect();
            template.extend_from_slice(
                format!("GET /{CASE}/end HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            );
            Stream { template, plain }
        })
}
