//! The watch task: one long-lived response of JSON lines ([`Event`]s), pushed by the agent as
//! changes happen, with a heartbeat while nothing does. A connection that goes quiet or ends is
//! reported once, in line, and opened again with [`Backoff`]; each new connection begins with the
//! agent's `Reset`, which is what resyncs the consumer, unless it is an empty list the adapter's
//! `EmptyGuard` does not believe yet (an agent back empty, see the module docs of
//! [`super`]): then the watch opens again on the retry curve. The task runs under
//! [`watch_task`](crate::registry::watch_task), so it ends when the consumer drops the stream.

use std::sync::Arc;
use std::time::Duration;

use super::EMPTY_GRACE;
use super::client::Client;
use super::convert::change;
use super::wire::{Event, HEARTBEAT};
use crate::error::{Result, display_chain};
use crate::instance::Instance;
use crate::registry::outage::EmptyGuard;
use crate::registry::{Change, WatchStream, watch_task};
use crate::retry::Backoff;

/// A watch with nothing, not even a heartbeat, for this long is taken as lost and opened again.
const QUIET: Duration = HEARTBEAT.saturating_mul(3);
/// Waits between attempts to open a lost watch again: doubling (with jitter) from the first to
/// the second.
const REOPEN: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// Longest line a watch may send (a `Reset` of a large service is one line).
const MAX_LINE: usize = 64 << 20;

/// Opens the watch of `service` and reads its first line, which must be the `Reset`.
pub(super) async fn open(client: &Client, service: &str) -> Result<(Lines, Vec<Instance>)> {
    let url = client.url(service, None, Some("watch"))?;
    let mut lines = Lines::new(client.send(client.stream(url)).await?);
    match lines.next().await.map_err(|e| client.err(e))? {
        Some(Event::Reset { instances }) => Ok((lines, instances)),
        Some(other) => Err(client.err(format!("the watch began with {other:?}, not a reset"))),
        None => Err(client.err("the watch ended before its first line")),
    }
}

/// The watch of `service`, from a connection [`open`] made: its `Reset` first, then the changes,
/// across reconnections, until the consumer leaves.
pub(super) fn spawn(
    client: Arc<Client>,
    empty: Arc<EmptyGuard>,
    service: String,
    opened: (Lines, Vec<Instance>),
) -> WatchStream {
    watch_task::spawn_watch(move |tx| async move {
        let mut opened = Some(opened);
        let mut backoff = Backoff::new(REOPEN.0, REOPEN.1);
        loop {
            let (mut lines, first) = match opened.take() {
                Some(o) => o,
                None => {
                    if !tx.sleep(backoff.next_delay()).await {
                        return;
                    }
                    let reopened = open(&client, &service).await;
                    empty.note(&reopened);
                    match reopened {
                        Ok(o) if empty.believe(&service, &o.1, EMPTY_GRACE) => o,
                        Ok(_) => {
                            tracing::debug!(%service, "the agent came back without instances of the service; not believed yet");
                            continue;
                        }
                        Err(e) => {
                            tracing::debug!(%service, "watch not open again yet: {e}");
                            continue;
                        }
                    }
                }
            };
            if !tx.send(Ok(Change::Reset(first))).await {
                return;
            }
            backoff.reset();
            // Lines until the connection ends; then one error, and the watch opens again.
            let lost = loop {
                let line = tokio::select! {
                    () = tx.closed() => return,
                    line = tokio::time::timeout(QUIET, lines.next()) => line,
                };
                let item = match line {
                    Err(_) => {
                        let quiet = humantime::format_duration(QUIET);
                        break format!("no line, not even a heartbeat, in {quiet}");
                    }
                    Ok(Err(e)) => break e,
                    Ok(Ok(None)) => break "the agent ended the watch".to_owned(),
                    Ok(Ok(Some(event))) => match change(event) {
                        None => continue,
                        Some(item) => item.map_err(|message| client.err(message)),
                    },
                };
                if !tx.send(item).await {
                    return;
                }
            };
            // The agent may have restarted: its next empty answers wait for the grace.
            empty.down();
            if !tx.send(Err(client.err(lost))).await {
                return;
            }
        }
    })
}

/// The JSON lines of a watch response.
pub(super) struct Lines {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no newline (a long line comes in many chunks; each is
    /// searched once).
    searched: usize,
}

impl Lines {
    fn new(resp: reqwest::Response) -> Self {
        Lines {
            resp,
            buf: Vec::new(),
            searched: 0,
        }
    }

    /// The next event; `None` when the response ended.
    async fn next(&mut self) -> std::result::Result<Option<Event>, String> {
        loop {
            if let Some(at) = self.buf[self.searched..].iter().position(|&b| b == b'\n') {
                let end = self.searched + at;
                let event = serde_json::from_slice(&self.buf[..end])
                    .map(Some)
                    .map_err(|e| format!("bad watch line: {e}"));
                self.buf.drain(..=end);
                self.searched = 0;
                return event;
            }
            self.searched = self.buf.len();
            if self.buf.len() > MAX_LINE {
                return Err(format!("a watch line is longer than {MAX_LINE} bytes"));
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => return Err("the watch ended inside a line".to_owned()),
                Err(e) => return Err(display_chain(&e)),
            }
        }
    }
}
