//! Username/password login for servers with auth enabled, and token refresh.
//!
//! nacos-sdk ships an HTTP login plugin, but chi uses its own for three reasons: the SDK's
//! plugin hard-codes the context path `/nacos`; it logs the password at debug level; and a wrong
//! password only shows up as a log line, after which every call fails with a bare 403. Here the
//! first login happens in [`Nacos::connect`](super::Nacos::connect), so a wrong password is a
//! clear error at once (with the server's status and message, never the password). A task of
//! chi's refreshes the token at half its lifetime: nacos-sdk only asks its plugin every 30 s,
//! which lets a token shorter-lived than a minute expire.
//!
//! The credentials travel as a form body (`POST {context_path}/v1/auth/login`), not as URL
//! query parameters, so they do not land in access logs.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use nacos_sdk::api::plugin::{AuthContext, AuthPlugin, LoginIdentityContext, RequestResource};
use tokio::time::Instant;

use super::NacosError;
use crate::retry::Backoff;
use crate::secret::Secret;

/// The header nacos-sdk sends the token in.
const ACCESS_TOKEN: &str = "accessToken";

/// A token and when to fetch the next.
struct Token {
    value: String,
    refresh_at: Instant,
}

/// The login plugin handed to nacos-sdk.
pub(crate) struct Login {
    /// `(http authority, context path)` of every server.
    servers: Vec<(String, String)>,
    username: String,
    password: Secret,
    timeout: Duration,
    http: reqwest::Client,
    token: ArcSwap<Option<Token>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginResponse {
    access_token: String,
    #[serde(default)]
    token_ttl: u64,
}

impl Login {
    pub(crate) fn new(
        servers: Vec<(String, String)>,
        username: String,
        password: Secret,
        timeout: Duration,
    ) -> Self {
        Login {
            servers,
            username,
            password,
            timeout,
            http: reqwest::Client::new(),
            token: ArcSwap::from_pointee(None),
        }
    }

    /// Logs in on the first server that answers; the error of the last one otherwise.
    pub(crate) async fn login(&self) -> Result<(), NacosError> {
        let mut last = NacosError::new(None, "no server configured");
        for (authority, context) in &self.servers {
            match self.login_at(authority, context).await {
                Ok(token) => {
                    self.token.store(Arc::new(Some(token)));
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn login_at(&self, authority: &str, context: &str) -> Result<Token, NacosError> {
        let url = format!("http://{authority}{context}/v1/auth/login");
        let resp = self
            .http
            .post(&url)
            .timeout(self.timeout)
            .form(&[
                ("username", self.username.as_str()),
                ("password", self.password.expose()),
            ])
            .send()
            .await
            .map_err(|e| {
                NacosError::new(None, format!("login at {url} failed: {}", e.without_url()))
            })?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(NacosError::new(
                Some(i32::from(status.as_u16())),
                format!(
                    "login of user `{}` at {url} refused: {}",
                    self.username,
                    self.redact(body.trim())
                ),
            ));
        }
        let parsed: LoginResponse = serde_json::from_str(&body).map_err(|e| {
            NacosError::new(
                None,
                format!(
                    "login at {url}: unexpected answer ({e}): {}",
                    self.redact(&body)
                ),
            )
        })?;
        // Refresh at half the lifetime; a server that gives no lifetime gets asked every minute.
        let ttl = Duration::from_secs(parsed.token_ttl.max(2));
        let refresh = (ttl / 2)
            .min(Duration::from_secs(3600))
            .max(Duration::from_secs(1));
        Ok(Token {
            value: parsed.access_token,
            refresh_at: Instant::now()
                + if parsed.token_ttl == 0 {
                    Duration::from_secs(60)
                } else {
                    refresh
                },
        })
    }

    /// Keeps the token fresh: logs in again at half its lifetime, every few seconds after a
    /// failure (2 to 4 s, jittered: the clients of a Nacos that restarted do not all log in at the
    /// same instant). Ends when nacos-sdk lets go of the plugin.
    pub(crate) async fn refresh_loop(login: Weak<Login>) {
        const RETRY: Duration = Duration::from_secs(2);
        let mut retry = Backoff::new(RETRY, 2 * RETRY).multiplier(1.0);
        loop {
            let wait = match login.upgrade() {
                Some(l) => match &**l.token.load() {
                    Some(t) => t.refresh_at.saturating_duration_since(Instant::now()),
                    None => Duration::ZERO,
                },
                None => return,
            };
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
            let Some(l) = login.upgrade() else { return };
            match Login::login(&l).await {
                Ok(()) => retry.reset(),
                Err(e) => {
                    drop(l);
                    tracing::warn!(error = %e, "nacos token refresh failed; retrying");
                    tokio::time::sleep(retry.next_delay()).await;
                }
            }
        }
    }

    /// A server message, cut short and with the password blanked should it ever echo it.
    fn redact(&self, text: &str) -> String {
        let short: String = text.chars().take(300).collect();
        if self.password.is_empty() {
            short
        } else {
            short.replace(self.password.expose(), "***")
        }
    }
}

#[async_trait::async_trait]
impl AuthPlugin for Login {
    async fn login(&self, _servers: Arc<Vec<String>>, _context: Arc<AuthContext>) {
        let due = match &**self.token.load() {
            Some(t) => Instant::now() >= t.refresh_at,
            None => true,
        };
        if due && let Err(e) = Login::login(self).await {
            tracing::warn!(error = %e, "nacos token refresh failed; keeping the old token");
        }
    }

    fn get_login_identity(&self, _: RequestResource) -> LoginIdentityContext {
        match &**self.token.load() {
            Some(t) => LoginIdentityContext::default().add_context(ACCESS_TOKEN, t.value.clone()),
            None => LoginIdentityContext::default(),
        }
    }
}
