//! Bounds on what weft reads and parses: files a config names (the config
//! itself, certificates and keys, endpoints files) are read only when they
//! are regular files no larger than a bound (a device, a FIFO or a huge file
//! is refused at once, without blocking), and YAML is parsed only up to a
//! nesting depth, checked by a streaming pass that stops at the first event
//! too deep (so a 100,000-deep document costs no more than a 65-deep one).

use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use yaml_rust2::parser::{Event, Parser};

/// The largest config file weft reads.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// The largest certificate, key or CA bundle file weft reads.
pub const MAX_PEM_BYTES: u64 = 1 << 20;
/// The largest endpoints file weft reads.
pub const MAX_ENDPOINTS_BYTES: u64 = 4 << 20;
/// The deepest nesting of mappings and sequences a YAML document may have.
pub const MAX_YAML_DEPTH: usize = 64;

/// The bytes of `path` when it is a regular file of at most `limit` bytes
/// (symbolic links followed). Opened non-blocking, so a FIFO cannot hang the
/// caller; the size is checked before reading and again while reading (a
/// file that grows meanwhile is refused too).
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a device, FIFO, socket or directory)",
        ));
    }
    let too_big = || io::Error::new(io::ErrorKind::FileTooLarge, format!("larger than {limit} bytes"));
    if meta.len() > limit {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(bytes)
}

/// [`read_regular`] as text, with errors that name the file.
pub fn read_regular_text(path: &Path, limit: u64) -> Result<String, String> {
    let bytes = read_regular(path, limit).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))
}

/// The line (1-based) where `text` first nests mappings and sequences
/// deeper than `max` (or than the scanner's own limit of 255 flow levels),
/// or `None` when it does not (or stops being YAML first: the full parse
/// reports that).
pub fn too_deep(text: &str, max: usize) -> Option<usize> {
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        let (event, marker) = match parser.next_token() {
            Ok(next) => next,
            // The scanner's own bound on flow nesting (`[[[...`), which it
            // can reach while looking ahead of the events.
            Err(e) if e.info().contains("recursion limit") => return Some(e.marker().line()),
            Err(_) => return None,
        };
        match event {
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                depth += 1;
                if depth > max {
                    return Some(marker.line());
                }
            }
            Event::MappingEnd | Event::SequenceEnd => depth = depth.saturating_sub(1),
            Event::StreamEnd => return None,
            _ => {}
        }
    }
}

/// Whether `text` holds no YAML content at all: only blank lines,
/// comments and document markers (an empty or truncated file).
pub fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_found_at_its_line_and_stops_early() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(too_deep(&deep, MAX_YAML_DEPTH), Some(1));
        let block = (0..70).map(|i| format!("{}a:\n", " ".repeat(i))).collect::<String>() + &" ".repeat(70) + "b: 1\n";
        assert_eq!(too_deep(&block, MAX_YAML_DEPTH), Some(MAX_YAML_DEPTH + 1));
        assert_eq!(too_deep("a: { b: [1, 2, { c: d }] }\n", 4), None);
        assert_eq!(too_deep("a: { b: [1, 2, { c: d }] }\n", 3), Some(1));
    }

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_regular(&file, 5).unwrap(), b"12345");
        assert_eq!(read_regular(&file, 4).unwrap_err().kind(), io::ErrorKind::FileTooLarge);
        let dev = read_regular(Path::new("/dev/urandom"), 5).unwrap_err();
        assert_eq!(dev.kind(), io::ErrorKind::InvalidInput, "{dev}");
        assert!(read_regular(dir.path(), 5).is_err());
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(read_regular(&fifo, 5).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn blank_files_are_told_from_configs() {
        assert!(is_blank(""));
        assert!(is_blank("\n  \n# nothing here\n---\n"));
        assert!(!is_blank("listeners: []\n"));
        assert!(!is_blank("# a comment\nadmin: { address: 127.0.0.1:9901 }\n"));
    }
}
