//! The ZooKeeper session: made on first use, replaced when it ends, and the calls made on it.
//!
//! A ZooKeeper session outlives connections (the client reconnects within it on its own, and the
//! server keeps its ephemeral nodes) but not its timeout: once the server expires it, every node
//! it created is gone and the session can never be used again. So the registry holds *the
//! current* session and makes a new one whenever it finds the old one ended (expired, closed);
//! the registrations then learn at their next keep-alive that their node is not owned by the
//! session in use and answer [`Liveness::Lost`](crate::registry::Liveness::Lost), and the
//! [`ServiceManager`](crate::ServiceManager) writes them again on the new session. Watches
//! reopen on it too.
//!
//! Every call runs under the configured request timeout; errors become chi's: a lost connection
//! or session is [`Error::Unavailable`], a refused ACL an error that names the user (never the
//! password) and the settings to fix.

use std::future::Future;
use std::sync::atomic::Ordering;

use zookeeper_client as zk;

use super::{BACKEND, Inner};
use crate::error::{Error, Result};

impl Inner {
    /// The client of the current session, making a new session when there is none or it ended.
    pub(super) async fn client(&self) -> Result<zk::Client> {
        let mut slot = self.session.lock().await;
        if let Some(client) = slot.as_ref()
            && !client.state().is_terminated()
        {
            return Ok(client.clone());
        }
        let settings = &self.settings;
        // The client tries the servers in turn, backing off, until a session is made; the request
        // timeout bounds it (a server that is starting refuses sessions for a moment after it
        // accepts connections).
        let mut connector = zk::Client::connector().with_session_timeout(settings.session_timeout);
        if let Some(user) = &settings.username {
            let password = settings
                .password
                .as_ref()
                .map(|p| p.expose())
                .unwrap_or_default();
            connector = connector.with_auth("digest", format!("{user}:{password}").as_bytes());
        }
        let connect = connector.connect(&settings.connect);
        let client = match tokio::time::timeout(settings.request_timeout, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                return Err(Error::Unavailable {
                    backend: BACKEND.into(),
                    message: format!("cannot open a session with {}: {e}", settings.connect),
                });
            }
            Err(_) => {
                return Err(Error::Unavailable {
                    backend: BACKEND.into(),
                    message: format!(
                        "no session with {} within {:?}",
                        settings.connect, settings.request_timeout
                    ),
                });
            }
        };
        let n = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        if slot.is_some() {
            tracing::info!(session = %client.session_id(), sessions = n, "zookeeper session ended; opened a new one");
        } else {
            tracing::debug!(session = %client.session_id(), "zookeeper session opened");
        }
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `call` on the current session under the request timeout. A session that ended under
    /// it is replaced and the call made once more on the new one.
    pub(super) async fn call<T, F, Fut>(&self, op: &str, path: &str, call: F) -> Result<T>
    where
        F: Fn(zk::Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, zk::Error>>,
    {
        self.try_call(op, path, call)
            .await
            .map_err(|f| self.error(op, path, f))
    }

    /// [`Inner::call`], with ZooKeeper's own error for the caller to look at.
    pub(super) async fn try_call<T, F, Fut>(
        &self,
        op: &str,
        path: &str,
        call: F,
    ) -> std::result::Result<T, Failure>
    where
        F: Fn(zk::Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, zk::Error>>,
    {
        let mut retried = false;
        loop {
            let client = self.client().await.map_err(Failure::Chi)?;
            match self.timed(op, path, call(client)).await {
                Err(Failure::Zk(zk::Error::SessionExpired | zk::Error::ClientClosed))
                    if !retried =>
                {
                    retried = true;
                }
                other => return other,
            }
        }
    }

    /// `fut` under the request timeout.
    pub(super) async fn timed<T>(
        &self,
        op: &str,
        path: &str,
        fut: impl Future<Output = std::result::Result<T, zk::Error>>,
    ) -> std::result::Result<T, Failure> {
        let _ = (op, path);
        match tokio::time::timeout(self.settings.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::Zk(e)),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// chi's error for a failed `op` on `path`.
    pub(super) fn error(&self, op: &str, path: &str, failure: Failure) -> Error {
        let e = match failure {
            Failure::Timeout => {
                return Error::Timeout {
                    backend: BACKEND.into(),
                    after: self.settings.request_timeout,
                };
            }
            Failure::Chi(e) => return e,
            Failure::Zk(e) => e,
        };
        let path = path.escape_debug();
        match e {
            zk::Error::ConnectionLoss
            | zk::Error::NoHosts
            | zk::Error::SessionExpired
            | zk::Error::SessionMoved
            | zk::Error::ClientClosed
            | zk::Error::Timeout => Error::Unavailable {
                backend: BACKEND.into(),
                message: format!("{op} `{path}`: {e}"),
            },
            zk::Error::NoAuth => {
                let who = match &self.settings.username {
                    Some(user) => format!("the digest user `{user}`"),
                    None => "a client without credentials".to_owned(),
                };
                Error::registry(
                    BACKEND,
                    format!(
                        "{op} `{path}`: not authorized: the node's ACL does not admit {who}; set \
                         {field}.username and password (or {u} / {p})",
                        field = super::FIELD,
                        u = super::ENV_USERNAME,
                        p = super::ENV_PASSWORD,
                    ),
                )
            }
            other => Error::registry(BACKEND, format!("{op} `{path}`: {other}")),
        }
    }
}

/// Why a call failed, before it becomes an [`Error`].
#[derive(Debug)]
pub(super) enum Failure {
    Zk(zk::Error),
    Timeout,
    /// No session could be opened.
    Chi(Error),
}

/// True when `e` says the server does not implement the request (an `addWatch` on ZooKeeper 3.5
/// and older): watches then fall back to one-shot watches.
pub(super) fn unimplemented(e: &Failure) -> bool {
    matches!(e, Failure::Zk(zk::Error::Unimplemented))
}
