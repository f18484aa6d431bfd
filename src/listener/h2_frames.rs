//! Finds the HTTP/2 frame headers (RFC 9113 §4.1: a 24-bit payload length,
//! a type, flags and a stream id, 9 bytes) in a byte stream that arrives in
//! pieces of any size: a header may straddle reads, and a payload is passed
//! over by its length without being looked at. O(frames) per piece, no
//! allocation; a frame's payload is never buffered.

/// Frame types this crate looks at (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;

/// The ACK flag of SETTINGS and PING; END_STREAM of DATA and HEADERS.
pub const ACK: u8 = 0x1;
pub const END_STREAM: u8 = 0x1;

/// GOAWAY's error code for a peer that may be generating excessive load.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

const HEAD_LEN: usize = 9;

/// One frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub kind: u8,
    pub flags: u8,
    /// Payload length.
    pub len: u32,
    /// Stream id (the reserved bit cleared).
    pub stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8; HEAD_LEN]) -> Self {
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// Where a byte stream is in its frames: inside a header (the bytes of it
/// seen so far), or inside a payload (the bytes of it still to pass over).
#[derive(Debug, Clone)]
pub struct FrameScanner {
    head: [u8; HEAD_LEN],
    have: u8,
    skip: u32,
}

impl FrameScanner {
    /// A scanner whose first `skip` bytes are not frames (the client's
    /// connection preface); 0 when the stream starts with a frame.
    pub fn after(skip: u32) -> Self {
        Self {
            head: [0; HEAD_LEN],
            have: 0,
            skip,
        }
    }

    /// Whether the bytes seen so far end exactly where a frame ends (so a
    /// frame may be put next without splitting one).
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }

    /// Passes over the next `bytes` of the stream, calling `each` with each
    /// frame header completed in them.
    pub fn scan(&mut self, mut bytes: &[u8], mut each: impl FnMut(FrameHead)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = bytes.len().min(self.skip as usize);
                bytes = &bytes[n..];
                // n <= skip, which is a u32.
                self.skip -= n as u32;
                continue;
            }
            let have = usize::from(self.have);
            let n = bytes.len().min(HEAD_LEN - have);
            self.head[have..have + n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if have + n < HEAD_LEN {
                // n < 9 here.
                self.have += n as u8;
                continue;
            }
            self.have = 0;
            let head = FrameHead::parse(&self.head);
            self.skip = head.len;
            each(head);
        }
    }
}

/// The bytes of a GOAWAY frame: `last_stream` is the highest stream the
/// sender may have acted on, `code` the error code (RFC 9113 §6.8).
pub fn goaway(last_stream: u32, code: u32) -> [u8; HEAD_LEN + 8] {
    let mut frame = [0u8; HEAD_LEN + 8];
    frame[2] = 8;
    frame[3] = GOAWAY;
    frame[9..13].copy_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    frame[13..].copy_from_slice(&code.to_be_bytes());
    frame
}

/// One frame's bytes: its 9-byte header, then `payload` (for tests).
#[cfg(test)]
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("test frame payload fits in 24 bits");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame headers `scanner` finds in `pieces`, and whether it ends at
    /// a boundary after each piece.
    fn scanned(scanner: &mut FrameScanner, pieces: &[&[u8]]) -> (Vec<FrameHead>, Vec<bool>) {
        let (mut heads, mut boundaries) = (Vec::new(), Vec::new());
        for piece in pieces {
            scanner.scan(piece, |h| heads.push(h));
            boundaries.push(scanner.at_boundary());
        }
        (heads, boundaries)
    }

    fn stream() -> (Vec<u8>, Vec<FrameHead>) {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        bytes.extend(frame(PING, 0, 0, &[7; 8]));
        bytes.extend(frame(HEADERS, 0x5, 0x8000_0003, &[0x82; 20]));
        bytes.extend(frame(DATA, 0, 3, &[]));
        bytes.extend(frame(DATA, END_STREAM, 3, &[1; 300]));
        bytes.extend(frame(PING, ACK, 0, &[7; 8]));
        let heads = vec![
            FrameHead {
                kind: SETTINGS,
                flags: 0,
                len: 6,
                stream: 0,
            },
            FrameHead {
                kind: PING,
                flags: 0,
                len: 8,
                stream: 0,
            },
            FrameHead {
                kind: HEADERS,
                flags: 0x5,
                len: 20,
                stream: 3,
            },
            FrameHead {
                kind: DATA,
                flags: 0,
                len: 0,
                stream: 3,
            },
            FrameHead {
                kind: DATA,
                flags: END_STREAM,
                len: 300,
                stream: 3,
            },
            FrameHead {
                kind: PING,
                flags: ACK,
                len: 8,
                stream: 0,
            },
        ];
        (bytes, heads)
    }

    #[test]
    fn finds_every_header_after_the_preface_in_one_piece() {
        let (bytes, heads) = stream();
        let mut scanner = FrameScanner::after(24);
        assert!(!scanner.at_boundary());
        assert_eq!(scanned(&mut scanner, &[&bytes]), (heads, vec![true]));
    }

    #[test]
    fn finds_the_same_headers_however_the_stream_is_split() {
        let (bytes, heads) = stream();
        // Every split in two and in three (headers cut anywhere, the
        // preface and payloads too), and one byte at a time.
        for i in 0..=bytes.len() {
            let mut scanner = FrameScanner::after(24);
            assert_eq!(
                scanned(&mut scanner, &[&bytes[..i], &bytes[i..]]).0,
                heads,
                "split at {i}"
            );
            for j in i..=bytes.len() {
                let mut scanner = FrameScanner::after(24);
                let pieces = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                assert_eq!(scanned(&mut scanner, &pieces).0, heads, "split at {i} and {j}");
            }
        }
        let mut scanner = FrameScanner::after(24);
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        let (found, boundaries) = scanned(&mut scanner, &bytewise);
        assert_eq!(found, heads);
        // At a boundary exactly where a frame ends.
        let ends: Vec<usize> = boundaries
            .iter()
            .enumerate()
            .filter(|(_, b)| **b)
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(ends, vec![24, 24 + 15, 24 + 32, 24 + 61, 24 + 70, 24 + 379, 24 + 396]);
    }

    #[test]
    fn a_header_cut_in_the_middle_is_not_a_boundary() {
        let mut scanner = FrameScanner::after(0);
        assert!(scanner.at_boundary());
        let ping = frame(PING, 0, 0, &[0; 8]);
        let (heads, boundaries) = scanned(&mut scanner, &[&ping[..4], &ping[4..12], &ping[12..]]);
        assert_eq!(heads.len(), 1);
        assert_eq!(boundaries, vec![false, false, true]);
        // The largest length passes 16 MiB over without looking at it.
        let big = frame(DATA, 0, 1, &[]);
        let mut head = big.clone();
        head[..3].copy_from_slice(&[0xff; 3]);
        scanner.scan(&head, |h| assert_eq!(h.len, (1 << 24) - 1));
        scanner.scan(&vec![0; (1 << 24) - 2], |_| panic!("a header inside a payload"));
        assert!(!scanner.at_boundary());
        scanner.scan(&[0], |_| {});
        assert!(scanner.at_boundary());
    }

    #[test]
    fn goaway_is_a_frame_the_scanner_reads_back() {
        let bytes = goaway(0x8000_0007, ENHANCE_YOUR_CALM);
        assert_eq!(&bytes[..9], &[0, 0, 8, GOAWAY, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[9..], &[0, 0, 0, 7, 0, 0, 0, 0xb]);
        let mut scanner = FrameScanner::after(0);
        let (heads, boundaries) = scanned(&mut scanner, &[&bytes]);
        assert_eq!(
            heads,
            vec![FrameHead {
                kind: GOAWAY,
                flags: 0,
                len: 8,
                stream: 0
            }]
        );
        assert_eq!(boundaries, vec![true]);
    }
}
