//! gRPC probe: the standard `grpc.health.v1.Health/Check` (the gRPC health checking protocol,
//! which Envoy's and Kubernetes' gRPC checks also speak); healthy only on `SERVING`.
//!
//! Each probe opens its own HTTP/2 connection, like the HTTP probe, so a dead server is seen at
//! once; the call carries a deadline equal to the probe's timeout.

use std::time::Duration;

use async_trait::async_trait;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{CheckError, Probe};
use crate::error::display_chain;
use crate::instance::Instance;

/// `grpc.health.v1.Health/Check` probe of one service name.
#[derive(Debug, Clone)]
pub struct GrpcProbe {
    service: String,
    timeout: Duration,
}

impl GrpcProbe {
    /// A check of `service` (empty: the server as a whole, per the protocol). Timeout 3 s.
    pub fn new(service: impl Into<String>) -> Self {
        GrpcProbe {
            service: service.into(),
            timeout: Duration::from_secs(3),
        }
    }

    /// Sets the timeout of connect plus call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The service name sent.
    pub fn service(&self) -> &str {
        &self.service
    }

    async fn call(&self, instance: &Instance) -> Result<(), CheckError> {
        let uri = format!("http://{}", instance.authority());
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| CheckError::Target {
                message: format!("{uri}: {e}"),
            })?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        let channel = endpoint.connect().await.map_err(|e| CheckError::Connect {
            message: format!("{uri}: {}", display_chain(&e)),
        })?;
        let mut client = HealthClient::new(channel);
        let response = client
            .check(HealthCheckRequest {
                service: self.service.clone(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::DeadlineExceeded => CheckError::Timeout {
                    after: self.timeout,
                },
                tonic::Code::NotFound => CheckError::NotServing {
                    status: format!(
                        "SERVICE_UNKNOWN ({:?} is not known to the server)",
                        self.service
                    ),
                },
                tonic::Code::Unavailable => CheckError::Connect {
                    message: format!("{uri}: {}", status.message()),
                },
                code => CheckError::Protocol {
                    message: format!("{uri}: {code:?}: {}", status.message()),
                },
            })?;
        let raw = response.into_inner().status;
        match ServingStatus::try_from(raw) {
            Ok(ServingStatus::Serving) => Ok(()),
            Ok(other) => Err(CheckError::NotServing {
                status: other.as_str_name().to_owned(),
            }),
            Err(_) => Err(CheckError::Protocol {
                message: format!("{uri}: unknown serving status {raw}"),
            }),
        }
    }
}

#[async_trait]
impl Probe for GrpcProbe {
    async fn check(&self, instance: &Instance) -> Result<(), CheckError> {
        match tokio::time::timeout(self.timeout, self.call(instance)).await {
            Ok(result) => result,
            Err(_) => Err(CheckError::Timeout {
                after: self.timeout,
            }),
        }
    }

    fn kind(&self) -> &'static str {
        "grpc"
    }
}
