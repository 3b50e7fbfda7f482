//! `chi://host:port`: the registry of a running `chi agent`, through its admin API.
//!
//! The embedded registry lives in one process; the agent serves it under `/v1` on its admin port
//! (see [`crate::admin`]), and this client turns that API back into a [`Registry`], so `discover`,
//! `watch`, `select`, `proxy` and other agents can share one embedded registry on one machine.
//! A watch is one long-lived response of JSON lines ([`Event`]), pushed by the agent as changes
//! happen, with a heartbeat while nothing does; a connection that goes quiet or ends is opened
//! again (with backoff) and resyncs with the `Reset` every watch starts with.

use std::time::Duration;

use async_trait::async_trait;
use chi_discovery::error::{Error, Result};
use chi_discovery::registry::{WatchStream, watch_task};
use chi_discovery::retry::Backoff;
use chi_discovery::{Change, HealthStatus, Instance, Liveness, Registry};
use serde::{Deserialize, Serialize};

const BACKEND: &str = "chi";
/// How often the agent writes a heartbeat line on a quiet watch.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(10);
/// A watch with nothing, not even a heartbeat, for this long is taken as lost and opened again.
const QUIET: Duration = Duration::from_secs(30);
/// Waits between attempts to open a lost watch again: doubling (with jitter) from the first to
/// the second.
const REOPEN: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// Longest line a watch may send (a `Reset` of a large service is one line).
const MAX_LINE: usize = 64 << 20;
/// Keep-alive period asked of managers registering through an agent.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Body of `POST /v1/services/{name}/instances/{id}/keepalive`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KeepAlive {
    pub(crate) instance: Instance,
    pub(crate) health: HealthStatus,
}

/// Answer of the keep-alive call.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Alive {
    pub(crate) alive: bool,
}

/// One line of `GET /v1/services/{name}/watch`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum Event {
    /// The whole list: the first line, and again after the agent's own watch recovered.
    Reset {
        instances: Vec<Instance>,
    },
    Added {
        instance: Instance,
    },
    Removed {
        instance: Instance,
    },
    Updated {
        instance: Instance,
    },
    /// The agent's watch of its registry failed; a `Reset` follows once it recovers.
    Error {
        message: String,
    },
    /// Nothing happened; the connection is alive.
    Heartbeat,
}

impl From<Change> for Event {
    fn from(c: Change) -> Self {
        match c {
            Change::Reset(instances) => Event::Reset { instances },
            Change::Add(instance) => Event::Added { instance },
            Change::Remove(instance) => Event::Removed { instance },
            Change::Update(instance) => Event::Updated { instance },
        }
    }
}

/// A [`Registry`] over a `chi agent`'s admin API.
#[derive(Debug, Clone)]
pub(crate) struct RemoteRegistry {
    base: String,
    http: reqwest::Client,
    /// For watches: no limit on the whole response (it lasts), a limit on each read.
    streams: reqwest::Client,
}

impl RemoteRegistry {
    /// A client of the agent at `base` (`http://host:port`).
    pub(crate) fn new(base: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let streams = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(RemoteRegistry {
            base,
            http,
            streams,
        })
    }

    /// Opens the watch of `service` and reads its first line, which must be the `Reset`.
    async fn open_watch(&self, service: &str) -> Result<(Lines, Vec<Instance>)> {
        let url = self.url(&format!("/{service}/watch"));
        let mut lines = Lines::new(self.send(self.streams.get(url)).await?);
        match lines.next().await.map_err(|e| self.err(e))? {
            Some(Event::Reset { instances }) => Ok((lines, instances)),
            Some(other) => Err(self.err(format!("the watch began with {other:?}, not a reset"))),
            None => Err(self.err("the watch ended before its first line")),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/services{path}", self.base)
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Unavailable {
            backend: BACKEND.into(),
            message: format!("{}: {e}", self.base),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.err(e))?;
        let status = resp.status();
        if status.is_success() {
            Ok(resp)
        } else {
            let body = resp.text().await.unwrap_or_default();
            Err(self.err(format!("HTTP {status}: {}", body.trim())))
        }
    }
}

#[async_trait]
impl Registry for RemoteRegistry {
    fn backend(&self) -> &str {
        BACKEND
    }

    async fn register(&self, instance: &Instance) -> Result<()> {
        let url = self.url(&format!("/{}/instances/{}", instance.name, instance.id));
        self.send(self.http.put(url).json(instance)).await?;
        Ok(())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        let url = self.url(&format!("/{service}/instances/{id}"));
        self.send(self.http.delete(url)).await?;
        Ok(())
    }

    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        let url = self.url(&format!(
            "/{}/instances/{}/keepalive",
            instance.name, instance.id
        ));
        let body = KeepAlive {
            instance: instance.clone(),
            health,
        };
        let resp = self.send(self.http.post(url).json(&body)).await?;
        let alive: Alive = resp.json().await.map_err(|e| self.err(e))?;
        Ok(if alive.alive {
            Liveness::Alive
        } else {
            Liveness::Lost
        })
    }

    fn keep_alive_interval(&self) -> Duration {
        KEEP_ALIVE
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        let resp = self
            .send(self.http.get(self.url(&format!("/{service}"))))
            .await?;
        resp.json().await.map_err(|e| self.err(e))
    }

    async fn services(&self) -> Result<Vec<String>> {
        let resp = self.send(self.http.get(self.url(""))).await?;
        resp.json().await.map_err(|e| self.err(e))
    }

    async fn watch(&self, service: &str) -> Result<WatchStream> {
        // The first line must come now, so a bad address fails the call, not the stream.
        let (lines, first) = self.open_watch(service).await?;
        let this = self.clone();
        let service = service.to_owned();
        Ok(watch_task::spawn_watch(move |tx| async move {
            let mut opened = Some((lines, first));
            let mut backoff = Backoff::new(REOPEN.0, REOPEN.1);
            loop {
                let (mut lines, first) = match opened.take() {
                    Some(o) => o,
                    None => {
                        if !tx.sleep(backoff.next_delay()).await {
                            return;
                        }
                        match this.open_watch(&service).await {
                            Ok(o) => o,
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
                        Err(_) => break format!("no line, not even a heartbeat, in {QUIET:?}"),
                        Ok(Err(e)) => break e,
                        Ok(Ok(None)) => break "the agent ended the watch".to_owned(),
                        Ok(Ok(Some(event))) => match event {
                            Event::Heartbeat => continue,
                            Event::Reset { instances } => Ok(Change::Reset(instances)),
                            Event::Added { instance } => Ok(Change::Add(instance)),
                            Event::Removed { instance } => Ok(Change::Remove(instance)),
                            Event::Updated { instance } => Ok(Change::Update(instance)),
                            Event::Error { message } => Err(this.err(message)),
                        },
                    };
                    if !tx.send(item).await {
                        return;
                    }
                };
                if !tx.send(Err(this.err(lost))).await {
                    return;
                }
            }
        }))
    }
}

/// The JSON lines of a watch response.
struct Lines {
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
                Err(e) => return Err(chi_discovery::error::display_chain(&e)),
            }
        }
    }
}
