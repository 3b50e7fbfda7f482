//! Serving an `axum::Router` as a registered, health-checked instance (feature `axum`).
//!
//! The order is what keeps every request of a rolling restart alive:
//!
//! 1. **Bind, then register.** The instance enters the registries only once its listener is
//!    bound, so no peer picks an address that refuses connections.
//! 2. **Health.** The registration's HTTP health path (`health_check.http`, e.g. `/health`) is
//!    answered by chi in front of the app: 200 while serving, 503 once shutting down, so a
//!    registry-run check (Consul's agent) sees the drain too.
//! 3. **SIGTERM (or SIGINT): deregister first, then drain.** The instance leaves every registry,
//!    keeps serving for a grace period while peers' watches and caches catch up (Kubernetes'
//!    `preStop` sleep, Envoy's drain time), then stops accepting and waits for the requests in
//!    flight (hyper's graceful shutdown).
//!
//! With [`Server::orca`] (features `orca` and `tower`), every response of the app carries this
//! process's load report (`endpoint-load-metrics`, or the `-bin` trailer of gRPC answers), so
//! clients that balance by reports (`orca_weighted_round_robin`, Envoy, gRPC) weigh it by its
//! load; the health path is not counted.
//!
//! ```no_run
//! # async fn demo() -> chi_discovery::Result<()> {
//! use axum::{Router, routing::get};
//! use chi_discovery::{Chi, integration::axum::Server};
//!
//! let chi = Chi::from_file("chi-config.yaml").await?;
//! let app = Router::new().route("/users/{id}", get(|| async { "user" }));
//! Server::new(&chi).serve(app).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::instance::CheckTarget;
use crate::stack::Chi;

/// How long a deregistered instance keeps serving before it stops accepting (default 2 s).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Serves an app as the registration of a [`Chi`] stack; see the module docs.
#[derive(Debug)]
pub struct Server<'a> {
    chi: &'a Chi,
    grace: Duration,
    #[cfg(all(feature = "orca", feature = "tower"))]
    orca: Option<Arc<crate::orca::ServerMetrics>>,
}

impl<'a> Server<'a> {
    /// A server for `chi`'s registration, with the default grace.
    pub fn new(chi: &'a Chi) -> Self {
        Server {
            chi,
            grace: DEFAULT_GRACE,
            #[cfg(all(feature = "orca", feature = "tower"))]
            orca: None,
        }
    }

    /// Attaches the load report of `metrics` to every response (see the module docs);
    /// handlers add their request's own values through `Extension<CallMetrics>`.
    #[cfg(all(feature = "orca", feature = "tower"))]
    pub fn orca(mut self, metrics: Arc<crate::orca::ServerMetrics>) -> Self {
        self.orca = Some(metrics);
        self
    }

    /// How long to keep serving after deregistering, before draining: at least the time peers
    /// take to see the deregistration (their watch, or their cache's refresh interval).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Binds `0.0.0.0:<registration.port>` and serves `app` until SIGTERM or SIGINT.
    pub async fn serve(self, app: Router) -> Result<()> {
        let port = self
            .chi
            .config()
            .registration
            .as_ref()
            .map(|r| r.port)
            .ok_or_else(|| {
                Error::config(
                    "service_discovery.registration",
                    "is missing: there is nothing to serve and register",
                )
            })?;
        let shutdown = termination();
        let address = format!("0.0.0.0:{port}");
        let listener = TcpListener::bind(&address).await.map_err(|source| {
            Error::config(
                "service_discovery.registration.port",
                format!("cannot listen on {address}: {source}"),
            )
        })?;
        self.serve_on(listener, app, shutdown).await
    }

    /// Serves `app` on `listener` until `shutdown` completes: registers once serving, then on
    /// `shutdown` deregisters, keeps serving for the grace, and drains.
    pub async fn serve_on(
        self,
        listener: TcpListener,
        app: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "the listener".to_owned());
        let serving = Arc::new(AtomicBool::new(true));
        #[cfg(all(feature = "orca", feature = "tower"))]
        let app = match &self.orca {
            Some(metrics) => app.layer(crate::orca::ReportLayer::new(metrics.clone())),
            None => app,
        };
        let app = match self.health_path() {
            Some(path) => {
                let flag = serving.clone();
                let health = get(move || {
                    let flag = flag.clone();
                    async move {
                        if flag.load(Ordering::Relaxed) {
                            (StatusCode::OK, "ok")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                        }
                    }
                });
                Router::new().route(&path, health).fallback_service(app)
            }
            None => app,
        };

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
        });

        // Bound and accepting: now peers may find it.
        match self.chi.register().await {
            Ok(report) => {
                for (backend, error) in report.failures() {
                    tracing::warn!(%backend, %error, "not registered yet; retrying in the background");
                }
            }
            Err(e @ (Error::Config { .. } | Error::Invalid { .. })) => {
                let _ = stop_tx.send(());
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, "not registered anywhere yet; retrying in the background")
            }
        }

        shutdown.await;
        serving.store(false, Ordering::Relaxed);
        for (id, result) in self.chi.shutdown().await {
            if let Err(e) = result {
                tracing::warn!(%id, error = %e, "deregistration on shutdown failed");
            }
        }
        tokio::time::sleep(self.grace).await;
        let _ = stop_tx.send(());
        match server.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(Error::Serve { address, source }),
            Err(join) => Err(Error::Serve {
                address,
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }

    /// The registration's HTTP health path, when it has one (a full URL is someone else's).
    fn health_path(&self) -> Option<String> {
        let check = self
            .chi
            .config()
            .registration
            .as_ref()?
            .health_check
            .as_ref()?;
        match &check.target {
            CheckTarget::Http(path) if path.starts_with('/') => Some(path.clone()),
            _ => None,
        }
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C; on other platforms Ctrl-C only). The handlers are
/// installed at once, before the instance registers, so a signal that comes early is not the
/// default action (the process killed, still registered) but a graceful shutdown.
fn termination() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (term, int) => {
                    if let Err(e) = term.and(int) {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                    }
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

// Tested with a real SIGTERM in `tests/sigterm.rs` (its own test binary: the signal goes to the
// whole process).
