//! The settings of the ZooKeeper adapter: what the user writes (the config file's
//! `service_discovery.registries.zookeeper` block, or a `zookeeper://` URL), the defaults, the
//! `CHI_ZOOKEEPER_*` environment names, and the checks that turn them into the [`Settings`] a
//! [`Zookeeper`](super::Zookeeper) runs with.
//!
//! The raw mirror of the YAML block ([`RawZookeeper`]) lives here too, beside its validation, so
//! the whole adapter is one module. Errors name the YAML path
//! (`service_discovery.registries.zookeeper.root: ...`), or `--registry` for a URL.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// YAML path of the ZooKeeper block, for config errors.
pub const FIELD: &str = "service_discovery.registries.zookeeper";
/// Environment variable that fills [`ZookeeperConfig::username`] (the config file's value loses).
pub const ENV_USERNAME: &str = "CHI_ZOOKEEPER_USERNAME";
/// Environment variable that fills [`ZookeeperConfig::password`] (the config file's value loses).
pub const ENV_PASSWORD: &str = "CHI_ZOOKEEPER_PASSWORD";
/// The server chi talks to when none is given.
pub const DEFAULT_SERVER: &str = "127.0.0.1:2181";
/// Where the Curator layout keeps services when no root is given (Spring Cloud Zookeeper's
/// default `spring.cloud.zookeeper.discovery.root`).
pub const DEFAULT_ROOT: &str = "/services";
/// Where the Dubbo layout keeps services when no root is given (Dubbo's default group).
pub const DEFAULT_DUBBO_ROOT: &str = "/dubbo";

/// A dotted path of a setting (`service_discovery.registries.zookeeper.root`, or `--registry`
/// for a URL), for the errors.
#[derive(Debug, Clone)]
pub(crate) struct At(String);

impl At {
    pub(crate) fn new(path: impl Into<String>) -> At {
        At(path.into())
    }
    fn join(&self, key: &str) -> At {
        At(format!("{}.{key}", self.0))
    }
    fn index(&self, i: usize) -> At {
        At(format!("{}[{i}]", self.0))
    }
    fn err(&self, message: impl Into<String>) -> Error {
        Error::config(self.0.clone(), message)
    }
    fn duration(&self, value: &str) -> Result<Duration> {
        match humantime::parse_duration(value.trim()) {
            Ok(d) if d > crate::config::MAX_DURATION => Err(self.err(
                crate::config::too_long(d, value).unwrap_or_else(|| "is too long".to_owned()),
            )),
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(self.err(format!("must be greater than zero, got {value:?}"))),
            Err(_) => Err(self.err(format!(
                "invalid duration {value:?}, expected a duration such as \"30s\", \"500ms\" or \"1m\""
            ))),
        }
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// How services are laid out under the root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// Curator's service discovery recipe (and Spring Cloud Zookeeper on it): an ephemeral node
    /// `ROOT/NAME/ID` holding the JSON of Curator's `ServiceInstance`.
    #[default]
    Curator,
    /// Dubbo's registry: `ROOT/INTERFACE/providers/URL-ENCODED-PROVIDER-URL`, ephemeral.
    Dubbo,
}

impl Layout {
    /// The name as written in the config file and the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Curator => "curator",
            Layout::Dubbo => "dubbo",
        }
    }

    /// The root used when none is configured.
    pub fn default_root(self) -> &'static str {
        match self {
            Layout::Curator => DEFAULT_ROOT,
            Layout::Dubbo => DEFAULT_DUBBO_ROOT,
        }
    }

    fn parse(value: &str, at: &At) -> Result<Layout> {
        match value.trim() {
            "curator" => Ok(Layout::Curator),
            "dubbo" => Ok(Layout::Dubbo),
            other => Err(at.err(format!("expected \"curator\" or \"dubbo\", got {other:?}"))),
        }
    }
}

/// Which ZooKeeper watches a watch uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WatchMode {
    /// A persistent recursive watch (ZooKeeper 3.6+); one-shot watches when the server answers
    /// that it does not implement them (3.5 and older).
    #[default]
    Auto,
    /// A persistent recursive watch only.
    Persistent,
    /// One-shot child and data watches, set again after every event (what clients of ZooKeeper
    /// 3.5 and older do).
    Oneshot,
}

impl WatchMode {
    /// The name as written in the config file and the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchMode::Auto => "auto",
            WatchMode::Persistent => "persistent",
            WatchMode::Oneshot => "oneshot",
        }
    }

    fn parse(value: &str, at: &At) -> Result<WatchMode> {
        match value.trim() {
            "auto" => Ok(WatchMode::Auto),
            "persistent" => Ok(WatchMode::Persistent),
            "oneshot" => Ok(WatchMode::Oneshot),
            other => Err(at.err(format!(
                "expected \"auto\", \"persistent\" or \"oneshot\", got {other:?}"
            ))),
        }
    }
}

/// How to reach ZooKeeper and how services are laid out in it.
#[derive(Debug, Clone, PartialEq)]
pub struct ZookeeperConfig {
    /// `host:port` of the ensemble's servers; the client moves to the next when one fails.
    pub servers: Vec<String>,
    /// The node under which services live; `None`: [`Layout::default_root`].
    pub root: Option<String>,
    /// How services are laid out under the root.
    pub layout: Layout,
    /// The session timeout chi asks for (the server bounds it by its `minSessionTimeout` and
    /// `maxSessionTimeout`): how long after chi's last contact its ephemeral nodes disappear.
    pub session_timeout: Duration,
    /// Deadline for establishing a session, and of every request.
    pub request_timeout: Duration,
    /// User of ZooKeeper's `digest` scheme, when nodes are protected by digest ACLs.
    pub username: Option<String>,
    /// Password of `username` (never printed).
    pub password: Option<Secret>,
    /// Which watches to use (default [`WatchMode::Auto`]).
    pub watch: WatchMode,
}

impl Default for ZookeeperConfig {
    /// `127.0.0.1:2181`, Curator layout under `/services`, session timeout 10 s, requests 5 s.
    fn default() -> Self {
        ZookeeperConfig {
            servers: vec![DEFAULT_SERVER.into()],
            root: None,
            layout: Layout::Curator,
            session_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            username: None,
            password: None,
            watch: WatchMode::Auto,
        }
    }
}

impl ZookeeperConfig {
    /// A config for `servers`, everything else default.
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        ZookeeperConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Fills `username` and `password` from `CHI_ZOOKEEPER_USERNAME` / `CHI_ZOOKEEPER_PASSWORD`
    /// when the config leaves them empty.
    pub fn with_env_credentials(mut self) -> Self {
        crate::secret::credentials_from_env(
            &mut self.username,
            &mut self.password,
            (ENV_USERNAME, ENV_PASSWORD),
        );
        self
    }

    /// The root in use: the configured one, or the layout's default.
    pub fn root(&self) -> &str {
        self.root
            .as_deref()
            .filter(|r| !r.trim().is_empty())
            .unwrap_or(self.layout.default_root())
    }

    /// Checks the values, as [`Zookeeper::connect`](super::Zookeeper) does before connecting;
    /// errors name the YAML path.
    pub fn validate(&self) -> Result<()> {
        self.validated().map(|_| ())
    }

    /// Checks the values and normalises the root (one leading `/`, no trailing one).
    pub(super) fn validated(&self) -> Result<Settings> {
        let at = At::new(FIELD);
        if self.servers.is_empty() {
            return Err(at.join("servers").err("must list at least one host:port"));
        }
        for (i, s) in self.servers.iter().enumerate() {
            host_port(s, &at.join("servers").index(i))?;
        }
        let root = normalise_root(self.root(), &at.join("root"))?;
        if self.session_timeout < Duration::from_millis(100) {
            return Err(at.join("session_timeout").err(format!(
                "must be at least 100ms, got {:?}",
                self.session_timeout
            )));
        }
        if self.request_timeout.is_zero() {
            return Err(at.join("request_timeout").err("must be greater than zero"));
        }
        let username = self.username.clone().filter(|u| !u.is_empty());
        let password = self.password.clone().filter(|p| !p.is_empty());
        if password.is_some() && username.is_none() {
            return Err(at.join("username").err("a password is set but no username"));
        }
        if let Some(u) = &username
            && u.contains(':')
        {
            return Err(at.join("username").err(format!(
                "must not contain `:` (ZooKeeper's digest scheme separates user and password \
                 with it), got {u:?}"
            )));
        }
        Ok(Settings {
            connect: self
                .servers
                .iter()
                .map(|s| s.trim())
                .collect::<Vec<_>>()
                .join(","),
            root,
            layout: self.layout,
            session_timeout: self.session_timeout,
            request_timeout: self.request_timeout,
            username,
            password,
            watch: self.watch,
        })
    }
}

/// The validated settings a [`Zookeeper`](super::Zookeeper) runs with.
#[derive(Debug)]
#[cfg_attr(not(feature = "zookeeper"), allow(dead_code))]
pub(super) struct Settings {
    /// `host:port,host:port`: the connect string, without a chroot (paths are absolute).
    pub(super) connect: String,
    pub(super) root: String,
    pub(super) layout: Layout,
    pub(super) session_timeout: Duration,
    pub(super) request_timeout: Duration,
    pub(super) username: Option<String>,
    pub(super) password: Option<Secret>,
    pub(super) watch: WatchMode,
}

/// `/a/b/` or `a/b` -> `/a/b`; no empty, `.` or `..` segment, and not `/` itself.
fn normalise_root(root: &str, at: &At) -> Result<String> {
    let trimmed = root.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Err(at.err(format!(
            "must name a node below `/` (chi's nodes would mix with everything else), got {root:?}"
        )));
    }
    for part in trimmed.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.chars().any(char::is_control) {
            return Err(at.err(format!(
                "has an empty, `.`, `..` or control-character segment, got {root:?}"
            )));
        }
    }
    if trimmed == "zookeeper" || trimmed.starts_with("zookeeper/") {
        return Err(at.err(format!(
            "`/zookeeper` is ZooKeeper's own subtree, got {root:?}"
        )));
    }
    Ok(format!("/{trimmed}"))
}

fn host_port(value: &str, at: &At) -> Result<()> {
    let ok = value.trim().rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if ok {
        Ok(())
    } else {
        Err(at.err(format!(
            "expected host:port such as \"127.0.0.1:2181\", got {value:?}"
        )))
    }
}

/// The `service_discovery.registries.zookeeper` block as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawZookeeper {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub servers: Vec<String>,
    pub root: Option<String>,
    pub layout: Option<String>,
    pub session_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub watch: Option<String>,
}

impl RawZookeeper {
    /// Checks the block into a config (`None` when it is not enabled); the environment's
    /// credentials win over the file's. Errors name the YAML path under [`FIELD`].
    pub(crate) fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<ZookeeperConfig>> {
        let at = &At::new(FIELD);
        if !self.enabled {
            return Ok(None);
        }
        if self.servers.is_empty() {
            return Err(at
                .join("servers")
                .err("needs at least one host:port when zookeeper is enabled"));
        }
        for (i, s) in self.servers.iter().enumerate() {
            host_port(s, &at.join("servers").index(i))?;
        }
        let layout = self
            .layout
            .as_deref()
            .map(|l| Layout::parse(l, &at.join("layout")))
            .transpose()?
            .unwrap_or_default();
        let root = non_empty(self.root);
        if let Some(r) = &root {
            normalise_root(r, &at.join("root"))?;
        }
        let defaults = ZookeeperConfig::default();
        let duration = |v: Option<String>, key: &str, default: Duration| {
            v.map_or(Ok(default), |v| at.join(key).duration(&v))
        };
        let session_timeout = duration(
            self.session_timeout,
            "session_timeout",
            defaults.session_timeout,
        )?;
        let request_timeout = duration(
            self.request_timeout,
            "request_timeout",
            defaults.request_timeout,
        )?;
        let watch = self
            .watch
            .as_deref()
            .map(|w| WatchMode::parse(w, &at.join("watch")))
            .transpose()?
            .unwrap_or_default();
        let config = ZookeeperConfig {
            servers: self.servers,
            root,
            layout,
            session_timeout,
            request_timeout,
            username: env(ENV_USERNAME).or(non_empty(self.username)),
            password: env(ENV_PASSWORD)
                .map(Secret::from)
                .or(self.password)
                .filter(|p| !p.is_empty()),
            watch,
        };
        // The rest of the rules (the same as for a config built by hand).
        config.validated()?;
        Ok(Some(config))
    }
}

/// `zookeeper://HOST:PORT[,HOST:PORT]/ROOT[?layout=curator|dubbo&watch=auto|persistent|oneshot]`
/// (the part after `zookeeper://`) into a config; credentials come from `env`.
pub(crate) fn from_url(
    rest: &str,
    at: &At,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ZookeeperConfig> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (hosts, root) = match path.split_once('/') {
        Some((hosts, root)) => (hosts, root.trim_matches('/')),
        None => (path, ""),
    };
    let servers: Vec<String> = hosts.split(',').map(str::to_owned).collect();
    for s in &servers {
        host_port(s, at)?;
    }
    let mut config = ZookeeperConfig {
        servers,
        root: (!root.is_empty()).then(|| format!("/{root}")),
        username: env(ENV_USERNAME).filter(|u| !u.is_empty()),
        password: env(ENV_PASSWORD)
            .map(Secret::from)
            .filter(|p| !p.is_empty()),
        ..ZookeeperConfig::default()
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "layout" => config.layout = Layout::parse(value, &at.join("layout"))?,
            "watch" => config.watch = WatchMode::parse(value, &at.join("watch"))?,
            other => {
                return Err(at.err(format!(
                    "unknown zookeeper:// parameter {other:?}, expected layout or watch"
                )));
            }
        }
    }
    if let Some(r) = &config.root {
        normalise_root(r, at)?;
    }
    Ok(config)
}

/// A stable identity of the registry (for last-known-good files): servers sorted, layout and
/// root; never a credential.
pub(crate) fn identity(config: &ZookeeperConfig) -> String {
    let mut servers: Vec<&str> = config.servers.iter().map(|s| s.trim()).collect();
    servers.sort();
    format!(
        "zookeeper(servers={},root={},layout={})",
        servers.join(","),
        config.root(),
        config.layout.as_str()
    )
}
