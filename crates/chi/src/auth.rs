//! Who may use `chi agent`'s registry API: the tokens of `service_discovery.agent`
//! ([`AgentSettings`]), checked on every `/v1` call and every console write.
//!
//! A caller sends `Authorization: Bearer TOKEN`. Reads (lists, watches, the console) need the
//! read token when one is set, or any write token; writes (register, keep alive, deregister)
//! need the write token, or a scoped token whose patterns match the service. No token, or one
//! the agent does not know, is `401`; a known token without the scope is `403`. Either way
//! nothing is changed, the body is JSON saying what was missing
//! (`{"error":"unauthorized","message":"..."}`), and `chi_agent_auth_refusals_total{reason}`
//! counts it.
//!
//! Tokens are compared as SHA-256 digests with [`subtle`]'s constant-time equality, every
//! configured token each time, so neither the time taken nor the token's length tells a guesser
//! how close they came (the digest hides the length; the configured digests are made once).

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chi_discovery::config::{AgentSettings, WriteScope};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as Metrics;
use subtle::ConstantTimeEq;

/// What a call needs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Need<'a> {
    /// Reading: lists, watches, the console.
    Read,
    /// Writing the service named.
    Write(&'a str),
}

/// The labels of `chi_agent_auth_refusals_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    /// `missing`, `invalid`, `scope` or `forwarding_off`.
    reason: &'static str,
}

/// A SHA-256 digest of a token.
type Digest = [u8; 32];

fn digest(token: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The agent's tokens, ready to check calls against; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Access {
    read: Option<Digest>,
    write: Option<Digest>,
    scopes: Vec<(Digest, WriteScope)>,
    refusals: Family<RefusalLabels, Counter>,
}

/// Why a call was refused: the status, a short reason and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let error = if self.status == StatusCode::UNAUTHORIZED {
            "unauthorized"
        } else {
            "forbidden"
        };
        let body =
            serde_json::json!({"error": error, "reason": self.reason, "message": self.message});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"chi agent\""),
            );
        }
        response
    }
}

/// Which configured token a presented one is.
enum Holder<'a> {
    Read,
    Write,
    Scope(&'a WriteScope),
}

impl Access {
    /// The tokens of `settings`, digested once.
    pub(crate) fn new(settings: &AgentSettings) -> Access {
        let d = |s: &chi_discovery::Secret| digest(s.expose().as_bytes());
        Access {
            read: settings.read_token.as_ref().map(d),
            write: settings.write_token.as_ref().map(d),
            scopes: settings
                .write_scopes
                .iter()
                .map(|s| (d(&s.token), s.clone()))
                .collect(),
            refusals: Family::default(),
        }
    }

    /// True when writes need a token.
    pub(crate) fn guards_writes(&self) -> bool {
        self.write.is_some() || !self.scopes.is_empty()
    }

    /// True when reads need a token.
    pub(crate) fn guards_reads(&self) -> bool {
        self.read.is_some()
    }

    /// Registers `chi_agent_auth_refusals_total` in `registry`.
    pub(crate) fn register_metrics(&self, registry: &mut Metrics) {
        registry.register(
            "chi_agent_auth_refusals",
            "Calls of the registry API or console writes refused (reason: missing or invalid \
             token, token without the scope, forwarding off)",
            self.refusals.clone(),
        );
    }

    /// Counts a refusal made elsewhere (forwarding off) and returns it.
    pub(crate) fn refuse(
        &self,
        status: StatusCode,
        reason: &'static str,
        message: String,
    ) -> Refusal {
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
        Refusal {
            status,
            reason,
            message,
        }
    }

    /// Lets a call with `headers` through when its token allows `need`; else the refusal,
    /// counted.
    pub(crate) fn check(&self, headers: &HeaderMap, need: Need<'_>) -> Result<(), Refusal> {
        let guarded = match need {
            Need::Read => self.guards_reads(),
            Need::Write(_) => self.guards_writes(),
        };
        if !guarded {
            return Ok(());
        }
        let Some(presented) = bearer(headers) else {
            return Err(self.refuse(
                StatusCode::UNAUTHORIZED,
                "missing",
                "this agent needs a token: send Authorization: Bearer TOKEN (chi:// clients: \
                 service_discovery.registries.chi.token or CHI_AGENT_TOKEN)"
                    .to_owned(),
            ));
        };
        let Some(holder) = self.holder(presented) else {
            return Err(self.refuse(
                StatusCode::UNAUTHORIZED,
                "invalid",
                "the token is not one this agent knows".to_owned(),
            ));
        };
        let allowed = match (need, holder) {
            (Need::Read, _) | (Need::Write(_), Holder::Write) => true,
            (Need::Write(service), Holder::Scope(scope)) => scope.allows(service),
            (Need::Write(_), Holder::Read) => false,
        };
        if allowed {
            return Ok(());
        }
        let Need::Write(service) = need else {
            return Ok(());
        };
        Err(self.refuse(
            StatusCode::FORBIDDEN,
            "scope",
            format!("this token may not write service {service:?}"),
        ))
    }

    /// The configured token `presented` is, compared in constant time against every one.
    fn holder(&self, presented: &[u8]) -> Option<Holder<'_>> {
        let p = digest(presented);
        let same = |d: &Option<Digest>| d.as_ref().is_some_and(|d| bool::from(d.ct_eq(&p)));
        // Every comparison runs, whichever matches.
        let read = same(&self.read);
        let write = same(&self.write);
        let scope = self
            .scopes
            .iter()
            .fold(None, |found, (d, s)| match bool::from(d.ct_eq(&p)) {
                true => found.or(Some(s)),
                false => found,
            });
        if write {
            Some(Holder::Write)
        } else if let Some(s) = scope {
            Some(Holder::Scope(s))
        } else if read {
            Some(Holder::Read)
        } else {
            None
        }
    }
}

/// The token of `Authorization: Bearer TOKEN`, if the header is there and well formed.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use chi_discovery::Secret;

    use super::*;

    fn access() -> Access {
        Access::new(&AgentSettings {
            read_token: Some(Secret::new("reader")),
            write_token: Some(Secret::new("writer")),
            write_scopes: vec![WriteScope {
                token: Secret::new("orders"),
                services: vec!["orders-*".into()],
            }],
            forward_writes: false,
            tls: None,
        })
    }

    fn with(token: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = token {
            h.insert(header::AUTHORIZATION, t.parse().expect("header"));
        }
        h
    }

    fn status(a: &Access, token: Option<&str>, need: Need<'_>) -> Option<StatusCode> {
        a.check(&with(token), need).err().map(|r| r.status)
    }

    #[test]
    fn each_token_does_what_it_may() {
        let a = access();
        let (unauthorized, forbidden) =
            (Some(StatusCode::UNAUTHORIZED), Some(StatusCode::FORBIDDEN));
        for token in ["Bearer reader", "Bearer writer", "bearer orders"] {
            assert_eq!(status(&a, Some(token), Need::Read), None, "{token}");
        }
        assert_eq!(status(&a, None, Need::Read), unauthorized);
        assert_eq!(status(&a, Some("Bearer nope"), Need::Read), unauthorized);
        assert_eq!(status(&a, Some("Basic writer"), Need::Read), unauthorized);
        assert_eq!(status(&a, Some("Bearer "), Need::Read), unauthorized);
        assert_eq!(
            status(&a, Some("Bearer writer"), Need::Write("billing")),
            None
        );
        assert_eq!(
            status(&a, Some("Bearer orders"), Need::Write("orders-api")),
            None
        );
        assert_eq!(
            status(&a, Some("Bearer orders"), Need::Write("billing")),
            forbidden
        );
        assert_eq!(
            status(&a, Some("Bearer reader"), Need::Write("orders-api")),
            forbidden
        );
        assert_eq!(
            status(&a, Some("Bearer writerx"), Need::Write("x")),
            unauthorized
        );
        let mut scrape = String::new();
        let mut registry = Metrics::default();
        a.register_metrics(&mut registry);
        prometheus_client::encoding::text::encode(&mut scrape, &registry).expect("encode");
        // No header, another scheme and an empty token are "missing".
        for (reason, n) in [("missing", 3), ("invalid", 2), ("scope", 2)] {
            let line = format!("chi_agent_auth_refusals_total{{reason=\"{reason}\"}} {n}");
            assert!(scrape.contains(&line), "{line} in {scrape}");
        }
    }

    #[test]
    fn nothing_configured_guards_nothing() {
        let a = Access::new(&AgentSettings::default());
        assert!(!a.guards_reads() && !a.guards_writes());
        assert_eq!(status(&a, None, Need::Write("x")), None);
        assert_eq!(status(&a, Some("Bearer any"), Need::Read), None);
    }

    #[test]
    fn refusals_are_json_that_says_what_to_do() {
        let r = access()
            .check(&with(None), Need::Read)
            .expect_err("refused");
        let response = r.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
