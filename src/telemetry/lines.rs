//! One writer of whole lines, off the request path: stdout (the access log)
//! and append-only files (the tap-compare mismatch log). A caller serializes
//! its record into one line and hands it over a bounded channel; one
//! dedicated thread writes the lines, so records never interleave and no
//! runtime worker ever blocks on output.
//!
//! Guarantees:
//! - a line reaches its sink whole, or not at all: [`LineWriter::try_write`]
//!   drops it (and says so) when the writer is a full channel behind, and a
//!   failed write loses only that write's lines;
//! - lines handed to one sink are written in the order they were handed over;
//! - lines queued for stdout are written together, in one write per batch
//!   (at most [`BATCH_BYTES`] and a line), gathered for [`LINGER`] after
//!   the first;
//! - [`channel`] spawns nothing: the writer runs once its owner calls
//!   [`Unstarted::start`] (the app does at start-up), and stops when every
//!   [`LineWriter`] is gone;
//! - [`LineWriter::flush`] returns once every line handed over before it has
//!   been written (the app flushes after draining).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Duration;

/// How many stdout bytes the writer gathers before it writes them.
pub const BATCH_BYTES: usize = 64 * 1024;

/// How long the writer lets stdout lines gather after the first one wakes
/// it. Without it, under load, every line woke the writer thread for a
/// write of its own: a wake-up, a context switch and a system call per
/// request (the access log cost 1.7x the CPU per request of a run without
/// it). Envoy flushes its access log buffer every second; a line here
/// waits at most this long.
pub const LINGER: Duration = Duration::from_millis(10);

/// Where a line goes.
#[derive(Clone, Debug)]
pub enum Sink {
    Stdout,
    /// Appended to this file, created if missing. The file is opened for
    /// each line, so a file moved away (rotated) is started afresh.
    File(Arc<Path>),
}

enum Message {
    Line(Sink, Vec<u8>),
    Flush(oneshot::Sender<()>),
}

/// The handing-over end: cheap to clone, never blocks a thread.
#[derive(Clone)]
pub struct LineWriter {
    queue: mpsc::Sender<Message>,
}

/// The writing end, built by [`channel`] and not yet running.
pub struct Unstarted {
    queue: mpsc::Receiver<Message>,
    stdout: Box<dyn Write + Send>,
}

/// A writer that holds at most `capacity` lines waiting to be written.
pub fn channel(capacity: usize) -> (LineWriter, Unstarted) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let unstarted = Unstarted {
        queue: rx,
        stdout: Box::new(std::io::stdout()),
    };
    (LineWriter { queue: tx }, unstarted)
}

impl LineWriter {
    /// Hands `line` (one record, ending in `\n`) to the writer without
    /// waiting; false when it was dropped (the writer is a full channel
    /// behind, or stopped).
    pub fn try_write(&self, sink: Sink, line: Vec<u8>) -> bool {
        self.queue.try_send(Message::Line(sink, line)).is_ok()
    }

    /// Waits until every line handed over before this call is written.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

impl Unstarted {
    /// Sends what would go to stdout to `out` instead.
    pub fn with_stdout(self, out: impl Write + Send + 'static) -> Self {
        Self {
            stdout: Box::new(out),
            ..self
        }
    }

    /// Runs the writer on its own thread (not a runtime worker: its writes
    /// block). It ends when the last [`LineWriter`] is dropped.
    pub fn start(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("weft-lines".into())
            .spawn(move || self.run())
            .map(drop)
    }

    fn run(mut self) {
        let mut batch = Vec::new();
        let mut flushed = Vec::new();
        while let Some(first) = self.queue.blocking_recv() {
            if matches!(first, Message::Line(Sink::Stdout, _)) {
                // Not a runtime worker: this thread only writes lines.
                std::thread::sleep(LINGER);
            }
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match message {
                    Message::Line(Sink::Stdout, line) => batch.extend_from_slice(&line),
                    Message::Line(Sink::File(path), line) => append(&path, &line),
                    Message::Flush(done) => flushed.push(done),
                }
                if batch.len() < BATCH_BYTES {
                    next = self.queue.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                // A closed stdout must not take the proxy down; the lines are lost.
                let _ = self.stdout.write_all(&batch).and_then(|()| self.stdout.flush());
                batch.clear();
            }
            for done in flushed.drain(..) {
                let _ = done.send(());
            }
        }
    }
}

/// Appends one line to `path` with a single write.
fn append(path: &Path, line: &[u8]) {
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(line));
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), error = %e, "cannot write a log line");
    }
}

/// A stdout for tests that keeps what is written.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().clone()).unwrap_or_default()
    }
}

#[cfg(test)]
impl Write for Captured {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_reach_their_sinks_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file: Arc<Path> = Arc::from(dir.path().join("mismatch.log"));
        let out = Captured::default();
        let (lines, writer) = channel(40);
        for i in 0..20 {
            assert!(lines.try_write(Sink::Stdout, format!("out {i}\n").into_bytes()));
            assert!(lines.try_write(Sink::File(file.clone()), format!("file {i}\n").into_bytes()));
        }
        writer.with_stdout(out.clone()).start().unwrap();
        lines.flush().await;
        let expected = |what: &str| (0..20).map(|i| format!("{what} {i}\n")).collect::<String>();
        assert_eq!(out.text(), expected("out"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), expected("file"));
    }

    #[test]
    fn a_full_channel_drops_rather_than_waits() {
        let (lines, _unstarted) = channel(2);
        let offered: Vec<bool> = (0..4).map(|_| lines.try_write(Sink::Stdout, b"x\n".to_vec())).collect();
        assert_eq!(offered, [true, true, false, false]);
    }
}
