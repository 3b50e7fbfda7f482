//! The failover client: one connection per member, requests on one member at a time, moving on
//! when it is unreachable or leaderless, every call under the request deadline; and the mapping
//! of etcd-client's errors onto chi's, with the password scrubbed from any text.
//!
//! Apart from the [`Registry`](crate::Registry) code so that what a call does (`mod.rs`) reads
//! without how it reaches the cluster.

use std::sync::atomic::Ordering;
use std::time::Duration;

use etcd_client::Client;

use super::config::{FIELD, Settings};
use super::{BACKEND, Inner};
use crate::error::Error;

pub(super) fn connect_error(settings: &Settings, e: etcd_client::Error) -> Error {
    let message = scrub(settings, &describe(&e));
    if let (Some(user), true) = (&settings.username, is_auth_error(&e)) {
        return Error::config(
            format!("{FIELD}.password"),
            format!(
                "etcd refused the login of user `{user}` ({message}); check the username and password"
            ),
        );
    }
    match e {
        etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => {
            Error::config(format!("{FIELD}.endpoints"), message)
        }
        _ => Error::Unavailable {
            backend: BACKEND.into(),
            message: format!("cannot connect: {message}"),
        },
    }
}

pub(super) fn is_auth_error(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ) || s.message().contains("authentication failed")
                || s.message().contains("invalid auth token")
                || s.message().contains("user name is empty")
        }
        _ => false,
    }
}

/// The short text of an etcd-client error (the gRPC message, not the whole `Status` dump).
pub(super) fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            if s.message().is_empty() {
                format!("{:?}", s.code())
            } else {
                format!("{:?}: {}", s.code(), s.message())
            }
        }
        other => other.to_string(),
    }
}

/// Removes the password from text that came back from the server or the transport.
pub(super) fn scrub(settings: &Settings, text: &str) -> String {
    match &settings.password {
        Some(p) if !p.is_empty() => text.replace(p.expose(), "***"),
        _ => text.to_owned(),
    }
}

/// True when etcd answered that the lease does not exist (expired, revoked, or lost in a
/// restart without its data).
pub(super) fn is_lease_gone(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// True for failures another member may not have: unreachable, or no leader.
pub(super) fn retryable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => s.code() == tonic::Code::Unavailable,
        _ => false,
    }
}

/// Why a call failed: etcd said no, or the deadline passed.
pub(super) enum Failure {
    Etcd(etcd_client::Error),
    Timeout,
}

impl Inner {
    /// The client of member `i`, connecting it on first use.
    pub(super) async fn client(&self, i: usize) -> std::result::Result<Client, etcd_client::Error> {
        self.clients[i]
            .get_or_try_init(|| {
                Client::connect([self.endpoints[i].as_str()], Some(self.options.clone()))
            })
            .await
            .cloned()
    }

    /// Runs one request under the request timeout, on the current member; when that member is
    /// unreachable, has no leader or does not answer in time, on the next one (every operation
    /// of this adapter is idempotent, so a retry is safe), going round the members twice at most.
    ///
    /// With several members, an attempt that is not the last gets half of what is left of the
    /// request timeout: a member cut off by a partition drops packets silently, and without this
    /// every request would wait for the whole timeout on it and never move on (the HTTP/2 ping
    /// notices the dead connection only after its own interval).
    pub(super) async fn call<T, F, Fut>(&self, mut op: F) -> std::result::Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let deadline =
            crate::util::after(tokio::time::Instant::now(), self.settings.request_timeout);
        let mut attempt = 0;
        loop {
            let i = self.current.load(Ordering::Relaxed) % n;
            let last = n == 1 || attempt + 1 >= 2 * n;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(Failure::Timeout);
            }
            let budget = if last { left } else { left / 2 };
            let result = tokio::time::timeout(budget, async {
                match self.client(i).await {
                    Ok(client) => op(client).await,
                    Err(e) => Err(e),
                }
            })
            .await;
            let failure = match result {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if retryable(&e) && !last => Failure::Etcd(e),
                Ok(Err(e)) => return Err(Failure::Etcd(e)),
                Err(_) if !last => Failure::Timeout,
                Err(_) => return Err(Failure::Timeout),
            };
            if let Failure::Etcd(e) = &failure {
                tracing::debug!(member = %self.endpoints[i], error = %describe(e), "etcd member failed; trying the next");
            } else {
                tracing::debug!(member = %self.endpoints[i], "etcd member did not answer in time; trying the next");
            }
            attempt += 1;
            // Move on, unless a concurrent call already did; tell the watches, whose streams on
            // the old member may be dead without knowing it.
            if self
                .current
                .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.moved.send_modify(|m| *m = m.wrapping_add(1));
            }
            if attempt % n == 0 {
                // A full round failed: give an election a moment.
                tokio::time::sleep(Duration::from_millis(100).min(left / 4)).await;
            }
        }
    }

    /// Turns a failure of `what` into chi's error, without the password.
    pub(super) fn error(&self, what: &str, failure: Failure) -> Error {
        let e = match failure {
            Failure::Timeout => {
                return Error::Timeout {
                    backend: BACKEND.into(),
                    after: self.settings.request_timeout,
                };
            }
            Failure::Etcd(e) => e,
        };
        let message = scrub(&self.settings, &format!("{what}: {}", describe(&e)));
        if is_auth_error(&e) {
            let user = self.settings.username.as_deref().unwrap_or("(none)");
            return Error::registry(
                BACKEND,
                format!(
                    "{message} (user `{user}`; is auth enabled and are the credentials right?)"
                ),
            );
        }
        let unavailable = match &e {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
            etcd_client::Error::GRpcStatus(s) => matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ),
            _ => false,
        };
        if unavailable {
            Error::Unavailable {
                backend: BACKEND.into(),
                message,
            }
        } else {
            Error::registry(BACKEND, message)
        }
    }
}
