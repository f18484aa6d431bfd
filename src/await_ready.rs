//! `weft await`: blocks until weft's admin `/ready` answers 200, or fails
//! after a timeout. Pods without native sidecars run it as the weft
//! container's `postStart` hook: the kubelet starts the next container only
//! when the hook returns, so the application starts after weft is ready.
//!
//! It polls with a plain HTTP/1.1 `GET /ready` on a fresh connection each
//! time; any answer but 200 (503 while starting or draining, a refused
//! connection, a stall) is retried until the deadline.

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Duration, Instant};

/// The pause between two polls.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long one poll may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// `weft await` flags.
#[derive(Debug, clap::Args)]
pub struct AwaitArgs {
    /// weft's admin address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin_address: SocketAddr,
    /// Give up (exit 1) after this long, e.g. 120s or 2m.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// Runs `weft await`: exit 0 once ready, 1 on timeout.
pub fn main(args: &AwaitArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft await: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(wait_ready(args.admin_address, args.timeout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft await: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Polls `http://admin/ready` until it answers 200; the error says what the
/// last poll saw.
pub async fn wait_ready(admin: SocketAddr, limit: std::time::Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match timeout(ATTEMPT_TIMEOUT, ready_status(admin)).await {
            Ok(Ok(200)) => return Ok(()),
            Ok(Ok(status)) => format!("status {status}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_string(),
        };
        if Instant::now() + POLL_INTERVAL >= deadline {
            return Err(format!(
                "http://{admin}/ready not ready after {} (last: {last})",
                humantime::format_duration(limit)
            ));
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// One `GET /ready`: the response's status code.
async fn ready_status(admin: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(admin).await?;
    let request = format!("GET /ready HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    // The status line is all that is needed.
    while !head.contains(&b'\n') {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status(&head).ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head.split(|b| *b == b'\n').next()?).ok()?;
    let mut words = line.split_whitespace();
    words.next().filter(|v| v.starts_with("HTTP/1."))?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_status;

    #[test]
    fn status_line_parses_and_garbage_does_not() {
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0"),
            Some(503)
        );
        assert_eq!(parse_status(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
