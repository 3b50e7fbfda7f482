//! `chi://host:port`: the registry of a running `chi agent`, through its admin API.
//!
//! The embedded registry lives in one process; the agent serves it under `/v1` on its admin port
//! (see [`crate::admin`]), and this client turns that API back into a [`Registry`], so `discover`,
//! `watch`, `select`, `proxy` and other agents can share one embedded registry on one machine.
//! A watch is one long-lived response of JSON lines ([`Event`]), pushed by the agent as changes
//! happen, with a heartbeat while nothing does; a connection that goes quiet or ends is opened
//! again (with backoff) and resyncs with the `Reset` every watch starts with.

use crate::output::human;
use std::time::Duration;

use async_trait::async_trait;
use chi_discovery::error::{Error, Result};
use chi_discovery::instance::validate_name;
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
    /// `http://host:port`, as given (for messages).
    base: String,
    /// `{base}/v1/services`, to which each call appends its percent-encoded path segments.
    services: reqwest::Url,
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
        let mut services = reqwest::Url::parse(&base)?;
        if services.cannot_be_a_base() {
            anyhow::bail!("{base} cannot hold a path");
        }
        services
            .path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{base} cannot hold a path"))?
            .pop_if_empty()
            .extend(["v1", "services"]);
        Ok(RemoteRegistry {
            base,
            services,
            http,
            streams,
        })
    }

    /// Opens the watch of `service` and reads its first line, which must be the `Reset`.
    async fn open_watch(&self, service: &str) -> Result<(Lines, Vec<Instance>)> {
        let url = self.url(service, None, Some("watch"))?;
        let mut lines = Lines::new(self.send(self.streams.get(url)).await?);
        match lines.next().await.map_err(|e| self.err(e))? {
            Some(Event::Reset { instances }) => Ok((lines, instances)),
            Some(other) => Err(self.err(format!("the watch began with {other:?}, not a reset"))),
            None => Err(self.err("the watch ended before its first line")),
        }
    }

    /// `{base}/v1/services/{service}[/instances/{id}][/{tail}]`, each segment percent-encoded: a
    /// name or id may hold `?`, `#`, `%` or spaces, and must reach the agent as one segment,
    /// unchanged. Names every registry refuses (`..`, `/`, empty) are refused here, before a
    /// request is built.
    fn url(&self, service: &str, id: Option<&str>, tail: Option<&str>) -> Result<reqwest::Url> {
        validate_name("service name", service)?;
        let mut url = self.services.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.push(service);
            if let Some(id) = id {
                validate_name("instance id", id)?;
                path.extend(["instances", id]);
            }
            if let Some(tail) = tail {
                path.push(tail);
            }
        }
        Ok(url)
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
        let url = self.url(&instance.name, Some(&instance.id), None)?;
        self.send(self.http.put(url).json(instance)).await?;
        Ok(())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        let url = self.url(service, Some(id), None)?;
        self.send(self.http.delete(url)).await?;
        Ok(())
    }

    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        let url = self.url(&instance.name, Some(&instance.id), Some("keepalive"))?;
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
            .send(self.http.get(self.url(service, None, None)?))
            .await?;
        resp.json().await.map_err(|e| self.err(e))
    }

    async fn services(&self) -> Result<Vec<String>> {
        let resp = self.send(self.http.get(self.services.clone())).await?;
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
                        Err(_) => {
                            break format!("no line, not even a heartbeat, in {}", human(QUIET));
                        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chi_discovery::registry::Memory;

    use super::*;

    /// An agent's admin API over an embedded registry, and a client of it.
    async fn agent() -> (Arc<Memory>, RemoteRegistry) {
        let memory = Arc::new(Memory::new());
        let addr = crate::admin::serve(
            "127.0.0.1:0".parse().expect("addr"),
            memory.clone(),
            Arc::new(|| (true, serde_json::Value::Null)),
            Arc::new(String::new),
            (crate::limits::Door::for_tests("agent"), 256 << 10),
        )
        .await
        .expect("admin");
        let remote = RemoteRegistry::new(format!("http://{addr}")).expect("client");
        (memory, remote)
    }

    fn ids(list: &[Instance]) -> Vec<&str> {
        let mut ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test]
    async fn ids_with_url_characters_reach_the_agent_unchanged() {
        let (memory, remote) = agent().await;
        let hostile = [
            "web?x",
            "web#x",
            "web%2Fx",
            "web%x",
            "with space",
            "ünï-名前-🚀",
            "a;b=c",
        ];
        let plain = Instance::new("web", "127.0.0.1", 8080).with_id("web");
        remote.register(&plain).await.expect("register web");
        for (n, id) in hostile.iter().enumerate() {
            let i = Instance::new("web", "127.0.0.1", 9000 + n as u16).with_id(*id);
            remote.register(&i).await.expect(id);
            assert_eq!(
                remote
                    .keep_alive(&i, HealthStatus::Healthy)
                    .await
                    .expect(id),
                Liveness::Alive,
                "{id}"
            );
        }
        let mut want: Vec<&str> = hostile.to_vec();
        want.push("web");
        want.sort_unstable();
        assert_eq!(ids(&memory.instances("web").await.expect("list")), want);
        assert_eq!(ids(&remote.instances("web").await.expect("list")), want);

        // Removing `web?x` removes it alone (it was once read as `web`).
        remote.deregister("web", "web?x").await.expect("deregister");
        want.retain(|id| *id != "web?x");
        assert_eq!(ids(&memory.instances("web").await.expect("list")), want);
    }

    #[tokio::test]
    async fn service_names_with_url_characters_watch_and_list() {
        let (_memory, remote) = agent().await;
        let name = "svc?a=1#frag %";
        let i = Instance::new(name, "127.0.0.1", 8080).with_id("i-1");
        remote.register(&i).await.expect("register");
        assert_eq!(remote.services().await.expect("services"), [name]);
        let mut watch = remote.watch(name).await.expect("watch");
        match futures_util::StreamExt::next(&mut watch).await {
            Some(Ok(Change::Reset(list))) => assert_eq!(ids(&list), ["i-1"]),
            other => panic!("expected a reset, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn names_every_registry_refuses_are_refused_before_a_request() {
        let (_memory, remote) = agent().await;
        for (name, id, field) in [
            ("..", "i", "service name"),
            ("web", "..", "instance id"),
            ("web", "a/b", "instance id"),
            ("web", " ", "instance id"),
        ] {
            let e = remote.deregister(name, id).await.expect_err("refused");
            assert!(matches!(e, Error::Invalid { .. }), "{name:?} {id:?}: {e}");
            assert!(e.to_string().contains(field), "{name:?} {id:?}: {e}");
        }
    }

    #[tokio::test]
    async fn the_agent_refuses_names_the_registries_refuse() {
        let (_memory, remote) = agent().await;
        let http = reqwest::Client::new();
        for (path, field) in [
            ("/v1/services/a%2Fb", "service name"),
            ("/v1/services/a..b/watch", "service name"),
            ("/v1/services/web/instances/a%2Fb", "instance id"),
            ("/v1/services/web/instances/%20", "instance id"),
        ] {
            let url = format!("{}{path}", remote.base);
            let get = http.get(&url).send().await.expect("get");
            let delete = http.delete(&url).send().await.expect("delete");
            let resp = if path.contains("instances") {
                delete
            } else {
                get
            };
            assert_eq!(resp.status(), 400, "{path}");
            let body = resp.text().await.expect("body");
            assert!(body.contains(field), "{path}: {body}");
        }
    }
}
