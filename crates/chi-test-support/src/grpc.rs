//! A tonic server with the standard gRPC health service (`grpc.health.v1.Health`) on loopback,
//! whose per-service status a test switches, for the gRPC health probe and `chi check`.

use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The server; it stops when dropped.
pub struct HealthServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    reporter: HealthReporter,
    task: JoinHandle<()>,
}

impl HealthServer {
    /// Serves on a free port, each `(service, status)` set before the first request.
    pub async fn start(statuses: &[(&str, ServingStatus)]) -> HealthServer {
        let (reporter, health) = tonic_health::server::health_reporter();
        for (service, status) in statuses {
            reporter.set_service_status(*service, *status).await;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await
                .expect("serve");
        });
        HealthServer {
            port,
            reporter,
            task,
        }
    }

    /// Switches what the health service answers for `service`.
    pub async fn set(&self, service: &str, status: ServingStatus) {
        self.reporter.set_service_status(service, status).await;
    }

    /// Stops serving (the listener closes, as when the process dies).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
