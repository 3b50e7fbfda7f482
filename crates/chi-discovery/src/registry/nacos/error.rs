//! The errors of the Nacos adapter: [`NacosError`] (a server's refusal, with Nacos' code and
//! message), and nacos-sdk's errors sorted into chi's ([`Error::Unavailable`] for transport
//! trouble, [`Error::Registry`] for a refusal).

use crate::error::Error;

use super::BACKEND;

/// An error answered by a Nacos server (or by nacos-sdk on its behalf): the server's error
/// code when there is one, and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NacosError {
    /// Nacos' error code (`403` unknown user, `400` bad parameter...), or an HTTP status.
    pub code: Option<i32>,
    /// What the server said.
    pub message: String,
}

impl NacosError {
    pub(super) fn new(code: Option<i32>, message: impl Into<String>) -> Self {
        NacosError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for NacosError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "nacos error {code}: {}", self.message),
            None => write!(f, "nacos: {}", self.message),
        }
    }
}

impl std::error::Error for NacosError {}

/// nacos-sdk's errors, sorted into chi's: transport trouble is `Unavailable`; a server's refusal
/// is a `Registry` error carrying Nacos' code and message.
pub(super) fn sdk_error(e: nacos_sdk::api::error::Error) -> Error {
    use nacos_sdk::api::error::Error as E;
    match e {
        E::ErrResponse(_, _, code, message) => Error::registry(
            BACKEND,
            NacosError::new(Some(code), message.unwrap_or_default()),
        ),
        E::ErrResult(text) => Error::registry(BACKEND, parse_err_result(&text)),
        E::TonicGrpcTransport(_)
        | E::TonicGrpcStatus(_)
        | E::GrpcBufferRequest(_)
        | E::ClientUnhealthy(_)
        | E::ClientShutdown(_)
        | E::NoAvailableServer => Error::Unavailable {
            backend: BACKEND.into(),
            message: e.to_string(),
        },
        other => Error::registry(BACKEND, NacosError::new(None, other.to_string())),
    }
}

/// nacos-sdk reports a refused request as the text `handle OP failed: result_code=R,
/// error_code=C, message=M`; pull the code and message back out.
pub(super) fn parse_err_result(text: &str) -> NacosError {
    let code = text
        .split("error_code=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit() && c != '-').next())
        .and_then(|n| n.parse::<i32>().ok());
    let message = text
        .split_once("message=")
        .map(|(op, m)| {
            let op = op.split(':').next().unwrap_or("").trim();
            if op.is_empty() {
                m.to_owned()
            } else {
                format!("{m} ({op})")
            }
        })
        .unwrap_or_else(|| text.to_owned());
    NacosError::new(code, message)
}
