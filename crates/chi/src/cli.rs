//! The command line: every subcommand, flag and `--help` example in one place.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::limits::{ConnArgs, RequestArgs};

const ABOUT: &str = "Service discovery and client-side load balancing from the command line";

const REGISTRY_HELP: &str = "Registry: memory (embedded, this process only), etcd://host:port[,host:port], \
consul://host:port, nacos://host:port, zookeeper://host:port[,host:port][/root][?layout=curator|dubbo], \
dns://[SERVER[:PORT]]?srv=TEMPLATE or ?a=TEMPLATE&port=N (read-only: SRV or A/AAAA records at the \
name TEMPLATE gives, {service} replaced, e.g. 'dns://10.96.0.10?srv=_{service}._tcp.svc.cluster.local'; \
no SERVER: the system resolver), or chi://host:port (the admin address of a running `chi agent`, \
which serves its embedded registry). Credentials come from CHI_CONSUL_TOKEN, CHI_ETCD_USERNAME, \
CHI_ETCD_PASSWORD, CHI_NACOS_USERNAME, CHI_NACOS_PASSWORD, CHI_ZOOKEEPER_USERNAME, \
CHI_ZOOKEEPER_PASSWORD, CHI_AGENT_TOKEN (chi://) or the config file, never from a flag";

/// `chi`: the command-line tool of chi-discovery.
#[derive(Debug, Parser)]
#[command(name = "chi", version, about = ABOUT, propagate_version = true)]
#[command(
    after_help = "Examples:\n  chi agent -c chi-config.yaml\n  chi discover user-service --registry chi://127.0.0.1:9901 -o json\n  chi check http://127.0.0.1:8080/health"
)]
pub(crate) struct Cli {
    /// More logging on stderr (-v info, -vv debug); CHI_LOG=... overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Sidecar: register the configured service, check its health, keep it registered, deregister on exit.
    Agent(AgentArgs),
    /// List the instances of a service.
    Discover(DiscoverArgs),
    /// Print changes to the instances of a service until interrupted.
    Watch(WatchArgs),
    /// Run one health check now: exit 0 healthy, 1 unhealthy, 2 bad input.
    Check(CheckArgs),
    /// Show which instances routing and the balancer pick over N picks.
    Select(SelectArgs),
    /// Load-balancing HTTP/1.1 and HTTP/2 reverse proxy.
    Proxy(ProxyArgs),
    /// xDS control plane (ADS, state-of-the-world) for gRPC's `xds:///NAME` clients and Envoy.
    Xds(XdsArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate a config file and print the effective values (secrets redacted); exit 2 on errors.
    #[command(after_help = "Example:\n  chi config check chi-config.yaml")]
    Check(ConfigCheckArgs),
}

/// Where the registry comes from: `--registry URL`, else the config file, else the embedded one.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct SourceArgs {
    #[arg(long, env = "CHI_REGISTRY", value_name = "URL", help = REGISTRY_HELP)]
    pub(crate) registry: Option<String>,
    /// Config file (chi-config.yaml); --registry overrides its registries.
    #[arg(short = 'c', long = "config", env = "CHI_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// A readable table.
    #[default]
    Table,
    /// JSON (discover: one array; watch: one object per line).
    Json,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  chi agent -c chi-config.yaml\n  chi agent -c chi-config.yaml --admin 127.0.0.1:9901\n\n\
With the embedded `memory` registry the agent serves it on the admin port, so other commands can use it:\n  \
chi discover user-service --registry chi://127.0.0.1:9901\n\n\
Beyond loopback, set a write token (and a read token to keep lists private):\n  \
CHI_AGENT_WRITE_TOKEN=... CHI_AGENT_READ_TOKEN=... chi agent -c chi-config.yaml --admin 0.0.0.0:9901\n  \
CHI_AGENT_TOKEN=... chi discover user-service --registry chi://agent.internal:9901"
)]
pub(crate) struct AgentArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    /// Admin HTTP address: /health, /metrics, the registry API under /v1 and the console at /ui
    /// (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:9901", value_name = "ADDR")]
    pub(crate) admin: SocketAddr,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    #[command(flatten)]
    pub(crate) requests: RequestArgs,
    /// Largest request body (JSON) the registry API takes, in bytes; more is answered 413.
    #[arg(long, env = "CHI_MAX_BODY", default_value_t = 256 * 1024, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1024..=(64 << 20)))]
    pub(crate) max_body: u32,
    /// Let the console at /ui deregister instances. Without it the console is read-only; with
    /// it, whoever may write through the /v1 API may (the write token, when one is set).
    #[arg(long)]
    pub(crate) console_writes: bool,
    /// Serve the registry API on an address beyond loopback without a write token
    /// (service_discovery.agent.write_token or CHI_AGENT_WRITE_TOKEN): anyone who reaches it
    /// may then register and deregister anything. Also lets forward_writes go without one.
    #[arg(long)]
    pub(crate) insecure: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  chi discover user-service --registry consul://127.0.0.1:8500\n  \
chi discover user-service --registry 'dns://127.0.0.1:8600?srv=_{service}._tcp.service.consul'\n  \
chi discover user-service --tag v1 --meta region=us-east-1 --healthy -o json --registry chi://127.0.0.1:9901\n\n\
JSON output: an array of objects with id, name, version, address, port, tags, meta, weight, health"
)]
pub(crate) struct DiscoverArgs {
    /// Service name.
    pub(crate) name: String,
    /// Only instances with this tag (repeatable: all must match).
    #[arg(long = "tag", value_name = "T")]
    pub(crate) tags: Vec<String>,
    /// Only instances with this metadata (repeatable: all must match).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub(crate) meta: Vec<String>,
    /// Only instances not known to be unhealthy.
    #[arg(long)]
    pub(crate) healthy: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub(crate) output: Format,
    #[command(flatten)]
    pub(crate) source: SourceArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  chi watch user-service --registry etcd://127.0.0.1:2379\n  \
chi watch user-service -o json --registry chi://127.0.0.1:9901\n\n\
JSON lines: {\"type\":\"reset\",\"instances\":[...]}, then {\"type\":\"added\"|\"removed\"|\"updated\",\"instance\":{...}}"
)]
pub(crate) struct WatchArgs {
    /// Service name.
    pub(crate) name: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub(crate) output: Format,
    #[command(flatten)]
    pub(crate) source: SourceArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  chi check http://127.0.0.1:8080/health\n  chi check tcp://127.0.0.1:6379\n  \
chi check grpc://127.0.0.1:50051/my.Service\n\nExit codes: 0 healthy, 1 unhealthy, 2 bad input"
)]
pub(crate) struct CheckArgs {
    /// What to check: http(s)://host:port/path, tcp://host:port, grpc://host:port[/service].
    pub(crate) url: String,
    /// Give up after this long (e.g. 500ms, 3s).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub(crate) timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub(crate) struct ConfigCheckArgs {
    /// The config file.
    pub(crate) file: PathBuf,
}

pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime_like(s)
}

/// Like [`parse_duration`], and `0s` (or `0ms`, `0m`) is zero.
pub(crate) fn parse_duration_or_zero(s: &str) -> Result<std::time::Duration, String> {
    duration_units(s)
}

/// `500ms`, `3s`, `1m`: the units chi-config.yaml uses.
fn humantime_like(s: &str) -> Result<std::time::Duration, String> {
    let d = duration_units(s)?;
    if d.is_zero() {
        return Err(format!("{:?}: must be more than zero", s.trim()));
    }
    Ok(d)
}

/// A number and a unit (`ms`, `s`, `m`), zero included, at most one day (as in the config
/// file: a longer timeout or grace is a mistake, and one near `u64::MAX` seconds would overflow
/// the clock it is added to).
fn duration_units(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: add a unit, e.g. 3s or 500ms"))?;
    let (num, unit) = s.split_at(split);
    let too_long = || format!("must be at most 1 day (24h), got {s}");
    let n: u64 = num.parse().map_err(|e: std::num::ParseIntError| {
        if *e.kind() == std::num::IntErrorKind::PosOverflow {
            too_long()
        } else {
            format!("{s:?}: expected a duration such as 3s or 500ms")
        }
    })?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        _ => return Err(format!("{s:?}: unknown unit {unit:?}, expected ms, s or m")),
    };
    let max = u64::try_from(chi_discovery::config::MAX_DURATION.as_millis()).unwrap_or(u64::MAX);
    match ms {
        Some(ms) if ms <= max => Ok(std::time::Duration::from_millis(ms)),
        _ => Err(too_long()),
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  chi select user-service -c chi-config.yaml --registry chi://127.0.0.1:9901\n  \
chi select user-service --strategy consistent_hash --key user-42 --count 1000 -o json --registry consul://127.0.0.1:8500\n  \
chi select user-service --service-version v2 --region us-west-2 --registry chi://127.0.0.1:9901"
)]
pub(crate) struct SelectArgs {
    /// Service name.
    pub(crate) name: String,
    /// Balancer strategy (default: load_balancer.strategy of the config, else round_robin).
    #[arg(long, value_name = "S")]
    pub(crate) strategy: Option<String>,
    /// Key of hashing strategies (every pick uses it).
    #[arg(long, value_name = "K")]
    pub(crate) key: Option<String>,
    /// How many picks.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub(crate) count: u32,
    /// Route as a request with X-Service-Version: V (turns version routing on).
    #[arg(long = "service-version", value_name = "V")]
    pub(crate) route_version: Option<String>,
    /// Route as a request with X-Client-Region: R (turns geo routing on).
    #[arg(long, value_name = "R")]
    pub(crate) region: Option<String>,
    /// Route as a request with X-Client-Zone: Z (turns geo routing on).
    #[arg(long, value_name = "Z")]
    pub(crate) zone: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub(crate) output: Format,
    #[command(flatten)]
    pub(crate) source: SourceArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  chi proxy -c chi-config.yaml --registry chi://127.0.0.1:9901\n  \
curl http://127.0.0.1:15001/user-service/api/users          # service from the first path segment\n  \
curl -H 'Host: user-service' http://127.0.0.1:15001/api/users\n  \
curl -H 'X-Service-Version: v2' -H 'X-Client-Region: us-west-2' http://127.0.0.1:15001/user-service/\n  \
chi proxy -c chi-config.yaml --warm-up all --workers 2   # load every service first, two workers\n\n\
Routing (the config's routing block): X-Service-Version, X-Client-Region, X-Client-Zone; \
X-Hash-Key is the key of hashing strategies.\n\
Responses carry X-Chi-Upstream: the id of the instance that answered."
)]
pub(crate) struct ProxyArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    /// Address to serve HTTP/1.1 and HTTP/2 (h2c) on.
    #[arg(long, default_value = "127.0.0.1:15001", value_name = "ADDR")]
    pub(crate) listen: SocketAddr,
    /// Admin HTTP address: /health, /metrics and the console at /ui (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:9902", value_name = "ADDR")]
    pub(crate) admin: SocketAddr,
    /// Timeout of one upstream attempt (to the response head).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) timeout: std::time::Duration,
    /// Retry non-idempotent methods (POST, PATCH) too.
    #[arg(long)]
    pub(crate) retry_all_methods: bool,
    /// Worker threads serving requests, each with its own event loop and upstream connection
    /// pool (like nginx's worker_processes). Default: one per CPU.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=MAX_WORKERS))]
    pub(crate) workers: Option<u16>,
    /// Services to load into the discovery cache before serving (comma-separated, or `all` for
    /// every service the registry lists); progress goes to stderr.
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub(crate) warm_up: Vec<String>,
    /// What names the service of a request: `path` (the first path segment, whatever the Host
    /// header says) or `host` (the Host header's first DNS label, the path as it is; a Host that
    /// is an IP address or `localhost` falls back to the path).
    #[arg(long, value_enum, default_value_t = RouteBy::Path, value_name = "RULE")]
    pub(crate) route_by: RouteBy,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    #[command(flatten)]
    pub(crate) requests: RequestArgs,
}

/// Most `chi proxy --workers`: each is a thread with its own event loop and upstream connections,
/// and more than a few per core only adds memory and context switches.
pub(crate) const MAX_WORKERS: i64 = 256;

/// What names the service of a proxied request (`chi proxy --route-by`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum RouteBy {
    /// The first path segment: `/user-service/api/x` goes to `user-service` as `/api/x`.
    #[default]
    Path,
    /// The Host header: `user-service.internal:15001` goes to `user-service`, path unchanged.
    Host,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  chi xds --listen 127.0.0.1:18000 --registry consul://127.0.0.1:8500\n  \
chi xds -c chi-config.yaml --listen 0.0.0.0:18000 --max-streams 4096\n  \
chi xds -c chi-config.yaml --listen 0.0.0.0:18000 --tls-cert xds.pem --tls-key xds.key --tls-client-ca clients-ca.pem\n\n\
gRPC clients: GRPC_XDS_BOOTSTRAP=bootstrap.json, target xds:///SERVICE (see the README's `chi xds` section).\n\
The config's load_balancer.strategy becomes the clusters' lb_policy."
)]
pub(crate) struct XdsArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    /// Address to serve ADS (gRPC) on; port 0 picks a free one. Printed as `xds on grpc://ADDR`.
    #[arg(long, default_value = "127.0.0.1:18000", value_name = "ADDR")]
    pub(crate) listen: SocketAddr,
    /// Most concurrent ADS streams; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 1024, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_streams: u32,
    /// Send routes over RDS (ADS) instead of inline in the listeners.
    #[arg(long)]
    pub(crate) rds: bool,
    /// After a registry failure, how long endpoints served before it that the registry lacks
    /// once back are still served (a restarted registry gets its instances back one by one);
    /// additions go out at once. 0s turns it off.
    #[arg(long, default_value = "10s", value_parser = parse_duration_or_zero, value_name = "DURATION")]
    pub(crate) restart_grace: std::time::Duration,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// HTTP/2 PING to every client this often; one that does not answer within the same time is
    /// dropped (0s: no PINGs).
    #[arg(long, env = "CHI_KEEPALIVE", default_value = "30s", value_parser = parse_duration_or_zero, value_name = "DURATION")]
    pub(crate) keepalive: std::time::Duration,
    /// Most names one ADS stream may follow that the registry does not know (yet); a request
    /// past it ends the stream with RESOURCE_EXHAUSTED.
    #[arg(long, env = "CHI_MAX_UNKNOWN_NAMES", default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub(crate) max_unknown_names: u32,
    /// Admin HTTP address serving /health, /metrics and the console at /ui (the connected
    /// clients, what each was sent, ACKed or NACKed); off unless given (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub(crate) admin: Option<SocketAddr>,
    /// Serve ADS over TLS with this certificate chain (PEM, leaf first); reloaded when the file
    /// changes. Printed as `xds on grpcs://ADDR`.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<std::path::PathBuf>,
    /// Require client certificates this CA (PEM) signed (mTLS): a client without one gets nothing.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_client_ca: Option<std::path::PathBuf>,
}

impl XdsArgs {
    /// The TLS of the ADS port, when --tls-cert and --tls-key are given.
    pub(crate) fn tls(&self) -> Option<chi_discovery::config::ServerTls> {
        Some(chi_discovery::config::ServerTls {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{parse_duration, parse_duration_or_zero};

    #[test]
    fn durations_are_bounded_at_one_day() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1440m"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
        for huge in [
            "18446744073709551615s",
            "18446744073709551616s",
            "307445734561825861m",
            "86401s",
        ] {
            assert_eq!(
                parse_duration_or_zero(huge),
                Err(format!("must be at most 1 day (24h), got {huge}")),
            );
        }
        assert!(parse_duration("10x").is_err_and(|e| e.contains("unknown unit")));
    }
}
