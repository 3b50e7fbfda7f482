//! `chi://host:port`: the registry of a running `chi agent`, through its admin API.
//!
//! The embedded registry lives in one process; the agent serves it under `/v1` on its admin port
//! (see [`crate::admin`]), and this client turns that API back into a [`Registry`], so `discover`,
//! `watch`, `select`, `proxy` and other agents can share one embedded registry on one machine.
//! Watches poll (every [`POLL`]) and diff; after an error they resync with a `Reset`.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chi_discovery::error::{Error, Result};
use chi_discovery::registry::{WatchStream, diff};
use chi_discovery::{Change, HealthStatus, Instance, Liveness, Registry};
use serde::{Deserialize, Serialize};

const BACKEND: &str = "chi";
/// How often a watch asks the agent.
const POLL: Duration = Duration::from_millis(200);
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

/// A [`Registry`] over a `chi agent`'s admin API.
#[derive(Debug, Clone)]
pub(crate) struct RemoteRegistry {
    base: String,
    http: reqwest::Client,
}

impl RemoteRegistry {
    /// A client of the agent at `base` (`http://host:port`).
    pub(crate) fn new(base: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(RemoteRegistry { base, http })
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
        // The first answer must come now, so a bad address fails the call, not the stream.
        let first = self.instances(service).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Change>>(64);
        let this = self.clone();
        let service = service.to_owned();
        tokio::spawn(async move {
            let mut view: HashMap<String, Instance> = HashMap::new();
            let mut next = Ok(first);
            let mut resync = true;
            loop {
                let items: Vec<Result<Change>> = match next {
                    Ok(list) if resync => {
                        resync = false;
                        view = list.iter().map(|i| (i.id.clone(), i.clone())).collect();
                        vec![Ok(Change::Reset(list))]
                    }
                    Ok(list) => {
                        let changes = diff(&view, &list);
                        view = list.into_iter().map(|i| (i.id.clone(), i)).collect();
                        changes.into_iter().map(Ok).collect()
                    }
                    Err(e) => {
                        let report = !resync;
                        resync = true;
                        if report { vec![Err(e)] } else { Vec::new() }
                    }
                };
                for item in items {
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(POLL) => {}
                }
                next = this.instances(&service).await;
            }
        });
        Ok(Box::pin(futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|item| (item, rx))
        })))
    }
}
