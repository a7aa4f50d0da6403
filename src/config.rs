//! Configuration: command-line flags, optionally backed by a YAML file (`--config FILE`).
//!
//! Every flag has the same name in the file (`http-listen: 0.0.0.0:80`). A flag given on the
//! command line wins over the file, which wins over the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::model::ObjectKey;
use crate::request::guard::Limits;
use crate::request::policy::{
    AccessLog, Cidr, Http1Engine, RequestLimits, ServerHeader, UpstreamOptions,
};
use crate::routing::{CompileOptions, GatewayOptions, NginxCompat};
use crate::tls::DefaultCert;

/// Why the configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {error}")]
    Parse {
        path: PathBuf,
        error: serde_yaml_ng::Error,
    },
    #[error("{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

#[derive(Debug, Parser)]
#[command(
    name = "portico",
    version,
    about = "Kubernetes Ingress controller and edge proxy on Pingora"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub flags: Flags,
    /// Take over the listeners of a running Portico (graceful upgrade; send it SIGQUIT next).
    #[arg(short = 'u', long, global = true)]
    pub upgrade: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the built-in examples (conf/examples) with echo backends, on 127.0.0.1 ports.
    Demo,
}

/// Every setting, as a flag and as a config-file key. All optional here; defaults are applied
/// by [`Flags::resolve`].
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Flags {
    /// YAML file with any of these settings.
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Serve Kubernetes objects from the YAML/JSON files in DIR (watched live) instead of a cluster.
    #[arg(long, global = true, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Plain-HTTP listener [default: 0.0.0.0:80].
    #[arg(long, global = true, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// HTTPS listener, or `off` [default: 0.0.0.0:443].
    #[arg(long, global = true, value_name = "ADDR")]
    pub https_listen: Option<String>,
    /// Port put in the `Location` of the 308 to HTTPS, when the HTTPS port clients see is not
    /// the listener's (a Service mapping 443 to 8443) [default: the port of --https-listen].
    #[arg(long, global = true, value_name = "PORT")]
    pub https_redirect_port: Option<u16>,
    /// Default certificate, from a kubernetes.io/tls Secret (NAMESPACE/NAME) that is followed
    /// live [default: a self-signed certificate generated at start-up].
    #[arg(long, global = true, value_name = "NS/NAME")]
    pub default_tls_secret: Option<String>,
    /// Default certificate, from a PEM file (the full chain); needs --default-tls-key.
    #[arg(long, global = true, value_name = "FILE")]
    pub default_tls_cert: Option<PathBuf>,
    /// Private key of --default-tls-cert (PEM: PKCS#1, PKCS#8 or SEC1).
    #[arg(long, global = true, value_name = "FILE")]
    pub default_tls_key: Option<PathBuf>,
    /// Admin listener for /healthz, /readyz and /metrics [default: 0.0.0.0:10254].
    #[arg(long, global = true, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Class name accepted in the legacy kubernetes.io/ingress.class annotation [default: portico].
    #[arg(long, global = true, value_name = "NAME")]
    pub ingress_class: Option<String>,
    /// spec.controller of the IngressClasses Portico owns [default: portico.dev/ingress-controller].
    #[arg(long, global = true, value_name = "NAME")]
    pub controller_name: Option<String>,
    /// Also serve ingress-nginx's Ingresses (its IngressClasses and legacy class), with
    /// ingress-nginx's semantics and annotations [default: false].
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub ingress_nginx_compat: Option<bool>,
    /// spec.controller of ingress-nginx's IngressClasses [default: k8s.io/ingress-nginx].
    #[arg(long, global = true, value_name = "NAME")]
    pub ingress_nginx_controller: Option<String>,
    /// ingress-nginx's ConfigMap of global settings, followed live
    /// [default: ingress-nginx/ingress-nginx-controller].
    #[arg(long, global = true, value_name = "NS/NAME")]
    pub ingress_nginx_configmap: Option<String>,
    /// The catch-all: a Service (its first port) that serves requests no Ingress rule takes,
    /// unless an Ingress's spec.defaultBackend does (ingress-nginx's flag of the same name)
    /// [default: none: 404].
    #[arg(long, global = true, value_name = "NS/NAME")]
    pub default_backend_service: Option<String>,
    /// Every connection, on both listeners, starts with a PROXY protocol (v1 or v2) header from
    /// the load balancer in front, whose source address is the client's; connections without
    /// one are closed. In compatibility mode the ConfigMap's use-proxy-protocol also turns it on
    /// [default: false].
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub proxy_protocol: Option<bool>,
    /// ingress-nginx's class in the legacy kubernetes.io/ingress.class annotation [default: nginx].
    #[arg(long, global = true, value_name = "NAME")]
    pub ingress_nginx_class: Option<String>,
    /// With --ingress-nginx-compat, also serve Ingresses that name no class at all, as
    /// ingress-nginx's flag of the same name [default: false].
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub watch_ingress_without_class: Option<bool>,
    /// Write status.loadBalancer of the Ingresses Portico serves; false during a side-by-side
    /// migration, so that two controllers do not fight over it [default: true].
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub publish_status: Option<bool>,
    /// Pingora worker threads [default: the number of CPUs].
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// Let worker threads take each other's tasks (tokio's multi-threaded scheduler): better
    /// balance when a few connections carry most of the load, at a cost on every wake-up;
    /// false: one single-threaded runtime per worker, each connection staying on the worker
    /// it was given, as nginx's workers [default: false].
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub work_stealing: Option<bool>,
    /// Networks whose X-Forwarded-* headers are trusted (repeatable, CIDR or IP).
    #[arg(long, global = true, value_name = "CIDR")]
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Access log: off, plain or json [default: plain].
    #[arg(long, global = true, value_name = "FORMAT")]
    pub access_log: Option<AccessLog>,
    /// Per-request metrics; `false` only to measure their cost [default: true].
    #[arg(long, global = true, value_name = "BOOL")]
    pub request_metrics: Option<bool>,
    /// Engine for HTTP/1.x requests: portico (Portico's own) or pingora (Pingora's proxy, for
    /// every request) [default: portico].
    #[arg(
        long,
        global = true,
        value_name = "ENGINE",
        env = "PORTICO_HTTP1_ENGINE"
    )]
    pub http1_engine: Option<Http1Engine>,
    /// The `Server` header of responses; empty sends none [default: portico].
    #[arg(long, global = true, value_name = "VALUE")]
    pub server_header: Option<String>,
    /// Pass the backend's `Server` header instead of Portico's (nginx's proxy_pass_header)
    /// [default: false].
    #[arg(long, global = true, value_name = "BOOL")]
    pub pass_server_header: Option<bool>,
    /// Upstream connect timeout, e.g. 5s [default: 5s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub upstream_connect_timeout: Option<String>,
    /// Upstream read timeout [default: 60s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub upstream_read_timeout: Option<String>,
    /// Upstream send timeout [default: 60s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub upstream_send_timeout: Option<String>,
    /// How long idle upstream connections are kept for reuse [default: 60s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub upstream_idle_timeout: Option<String>,
    /// How many endpoints an idempotent request may try when connecting fails or the connection
    /// is reset before a response [default: 2].
    #[arg(long, global = true, value_name = "N")]
    pub upstream_attempts: Option<usize>,
    /// Largest request body, e.g. 1m; 0 is unlimited; answered with 413 [default: 1m].
    #[arg(long, global = true, value_name = "SIZE")]
    pub max_body_size: Option<String>,
    /// Largest request header block; answered with 431 [default: 32k].
    #[arg(long, global = true, value_name = "SIZE")]
    pub max_header_size: Option<String>,
    /// Longest request target; answered with 414 [default: 8k].
    #[arg(long, global = true, value_name = "SIZE")]
    pub max_uri_length: Option<String>,
    /// Longest time from the first byte of a request header to its end [default: 60s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub client_header_timeout: Option<String>,
    /// Longest pause between two reads of a request body [default: 60s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub client_body_timeout: Option<String>,
    /// How long an idle client keep-alive connection stays open [default: 75s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub keepalive_timeout: Option<String>,
    /// After SIGTERM, keep accepting (with /readyz at 503) for this long [default: 10s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub shutdown_grace_period: Option<String>,
    /// Then wait at most this long for in-flight requests [default: 20s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub shutdown_drain_timeout: Option<String>,
    /// Kubernetes: kubeconfig file to use instead of the in-cluster account or $KUBECONFIG.
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes: watch only this namespace (IngressClasses are cluster-scoped) [default: all].
    #[arg(long, global = true, value_name = "NS")]
    pub watch_namespace: Option<String>,
    /// Address written to the status of Portico's Ingresses (repeatable, IP or hostname)
    /// [default: $NODE_IP].
    #[arg(long, global = true, value_name = "ADDR")]
    #[serde(default)]
    pub publish_address: Vec<String>,
    /// Namespace of the status-writer Lease [default: $POD_NAMESPACE, else default].
    #[arg(long, global = true, value_name = "NS")]
    pub election_namespace: Option<String>,
    /// Name of the status-writer Lease [default: portico-leader].
    #[arg(long, global = true, value_name = "NAME")]
    pub election_lease_name: Option<String>,
    /// How long a Lease holds without renewal [default: 15s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub election_lease_duration: Option<String>,
    /// How often the holder renews the Lease, and others retry [default: 5s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub election_renew_period: Option<String>,
    /// Gateway API: a listener port and the socket that serves it, as `PORT=ADDR` (plain HTTP)
    /// or `https:PORT=ADDR` (TLS), repeatable or comma-separated, e.g. `80=0.0.0.0:80`. A
    /// Gateway listener on another port, or of the other protocol, is not Accepted
    /// (`PortUnavailable`). A socket may differ from the port it serves (tests map port 80 to
    /// another one). [default: none, Gateway API off]
    #[arg(long, global = true, value_name = "PORT=ADDR")]
    #[serde(default)]
    pub gateway_listen: Vec<String>,
    /// Gateway API: addresses handed out one per Gateway, as `FIRST-LAST` or a list
    /// (repeatable); a connection picks its Gateway by the address it arrived on. Without a
    /// pool every Gateway shares the listen sockets' own addresses (and --publish-address).
    #[arg(long, global = true, value_name = "ADDRS")]
    #[serde(default)]
    pub gateway_address_pool: Vec<String>,
    /// Gateway API: `spec.controllerName` of the GatewayClasses Portico serves
    /// [default: portico.dev/gateway-controller].
    #[arg(long, global = true, value_name = "NAME")]
    pub gateway_controller_name: Option<String>,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub manifests: Option<PathBuf>,
    pub http_listen: SocketAddr,
    /// `None` when HTTPS is off: no TLS listener, and no redirect to HTTPS.
    pub https_listen: Option<SocketAddr>,
    /// The HTTPS port of redirects; `None` exactly when HTTPS is off.
    pub https_redirect_port: Option<u16>,
    pub default_tls: DefaultCert,
    pub admin_listen: SocketAddr,
    pub compile: CompileOptions,
    pub threads: usize,
    pub work_stealing: bool,
    pub trusted_proxies: Vec<Cidr>,
    pub access_log: AccessLog,
    pub request_metrics: bool,
    pub http1_engine: Http1Engine,
    pub server_header: ServerHeader,
    pub upstream: UpstreamOptions,
    pub limits: RequestLimits,
    pub shutdown_grace_period: Duration,
    pub shutdown_drain_timeout: Duration,
    pub kubernetes: KubeOptions,
}

/// Settings of the Kubernetes source (used when `--manifests` is absent).
#[derive(Clone, Debug)]
pub struct KubeOptions {
    pub kubeconfig: Option<PathBuf>,
    /// `None` watches every namespace.
    pub watch_namespace: Option<String>,
    /// Written to `status.loadBalancer.ingress`; empty means no status is written.
    pub publish_addresses: Vec<PublishAddress>,
    pub election: ElectionOptions,
}

/// One entry of `status.loadBalancer.ingress`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishAddress {
    Ip(std::net::IpAddr),
    Hostname(String),
}

impl std::str::FromStr for PublishAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(ip) = s.parse() {
            return Ok(PublishAddress::Ip(ip));
        }
        // A DNS name: dot-separated labels of letters, digits and '-', not starting or ending
        // with '-'. This is what the API server validates for `hostname`.
        let valid = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if valid {
            Ok(PublishAddress::Hostname(s.to_ascii_lowercase()))
        } else {
            Err(format!("{s:?} is neither an IP address nor a DNS name"))
        }
    }
}

/// Leader election for the one Ingress-status writer.
#[derive(Clone, Debug)]
pub struct ElectionOptions {
    pub namespace: String,
    pub lease_name: String,
    /// `$POD_NAME`, else the host name.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_period: Duration,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn hostname() -> String {
    env_nonempty("HOSTNAME")
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| format!("portico-{}", std::process::id()))
}

fn parse_addr(
    flag: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let v = value.unwrap_or_else(|| default.to_string());
    v.parse().map_err(|_| ConfigError::Invalid {
        flag,
        reason: format!("{v:?} is not an IP:port address"),
    })
}

impl Flags {
    /// `--gateway-listen`, `--gateway-address-pool` and `--gateway-controller-name`; `None`
    /// without `--gateway-listen` (Gateway API off).
    fn gateway_options(&self, kube: &KubeOptions) -> Result<Option<GatewayOptions>, ConfigError> {
        let mut http = Vec::new();
        let mut https = Vec::new();
        for item in self.gateway_listen.iter().flat_map(|s| s.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let invalid = |reason: String| ConfigError::Invalid {
                flag: "--gateway-listen",
                reason,
            };
            let (tls, rest) = match item.strip_prefix("https:") {
                Some(rest) => (true, rest),
                None => (false, item.strip_prefix("http:").unwrap_or(item)),
            };
            let (port, addr) = rest
                .split_once('=')
                .ok_or_else(|| invalid(format!("{item:?} is not PORT=ADDR")))?;
            let port: u16 = port
                .trim()
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid(format!("{port:?} is not a port")))?;
            let addr: SocketAddr = addr
                .trim()
                .parse()
                .map_err(|_| invalid(format!("{addr:?} is not an IP:port address")))?;
            if http
                .iter()
                .chain(&https)
                .any(|(p, a)| *p == port || *a == addr)
            {
                return Err(invalid(format!("{item:?}: port or address given twice")));
            }
            if tls {
                https.push((port, addr));
            } else {
                http.push((port, addr));
            }
        }
        if http.is_empty() && https.is_empty() {
            return Ok(None);
        }
        let mut pool = Vec::new();
        for item in self.gateway_address_pool.iter().flat_map(|s| s.split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let invalid = || ConfigError::Invalid {
                flag: "--gateway-address-pool",
                reason: format!("{item:?} is not an IP address or an IPv4 range FIRST-LAST"),
            };
            match item.split_once('-') {
                Some((a, b)) => {
                    let a: std::net::Ipv4Addr = a.trim().parse().map_err(|_| invalid())?;
                    let b: std::net::Ipv4Addr = b.trim().parse().map_err(|_| invalid())?;
                    let (a, b) = (u32::from(a), u32::from(b));
                    if b < a || b - a >= 65_536 {
                        return Err(invalid());
                    }
                    pool.extend((a..=b).map(|n| std::net::IpAddr::V4(n.into())));
                }
                None => pool.push(item.parse().map_err(|_| invalid())?),
            }
        }
        // Without a pool: the sockets' own addresses, and the published ones.
        let mut shared: Vec<std::net::IpAddr> = http
            .iter()
            .chain(&https)
            .map(|(_, a)| a.ip())
            .filter(|ip| !ip.is_unspecified())
            .collect();
        shared.extend(kube.publish_addresses.iter().filter_map(|a| match a {
            PublishAddress::Ip(ip) => Some(*ip),
            PublishAddress::Hostname(_) => None,
        }));
        shared.sort();
        shared.dedup();
        Ok(Some(GatewayOptions {
            controller_name: self
                .gateway_controller_name
                .clone()
                .unwrap_or_else(|| crate::translate::gateway::DEFAULT_CONTROLLER_NAME.into()),
            http,
            https,
            pool,
            shared,
            ingress_sockets: Vec::new(),
        }))
    }
}

fn parse_size(flag: &'static str, value: Option<String>, default: u64) -> Result<u64, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    crate::translate::parse_size(&v).map_err(|reason| ConfigError::Invalid { flag, reason })
}

fn parse_duration(
    flag: &'static str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    humantime::parse_duration(v.trim()).map_err(|e| ConfigError::Invalid {
        flag,
        reason: format!("{v:?}: {e}"),
    })
}

fn default_tls(
    secret: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<DefaultCert, ConfigError> {
    match (secret, cert, key) {
        (None, None, None) => Ok(DefaultCert::Generated),
        (Some(s), None, None) => match s.trim().split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(DefaultCert::Secret(ObjectKey::new(ns, name)))
            }
            _ => Err(ConfigError::Invalid {
                flag: "--default-tls-secret",
                reason: format!("{s:?} is not NAMESPACE/NAME"),
            }),
        },
        (None, Some(cert), Some(key)) => Ok(DefaultCert::Files { cert, key }),
        (None, _, _) => Err(ConfigError::Invalid {
            flag: "--default-tls-cert",
            reason: "--default-tls-cert and --default-tls-key go together".into(),
        }),
        (Some(_), _, _) => Err(ConfigError::Invalid {
            flag: "--default-tls-secret",
            reason: "give either --default-tls-secret or --default-tls-cert/--default-tls-key"
                .into(),
        }),
    }
}

impl Flags {
    /// Reads a config file into flags.
    pub fn from_file(path: &Path) -> Result<Flags, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        serde_yaml_ng::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            error,
        })
    }

    /// Fills every unset flag from `file`.
    pub fn or(self, file: Flags) -> Flags {
        Flags {
            config: self.config,
            manifests: self.manifests.or(file.manifests),
            http_listen: self.http_listen.or(file.http_listen),
            https_listen: self.https_listen.or(file.https_listen),
            https_redirect_port: self.https_redirect_port.or(file.https_redirect_port),
            default_tls_secret: self.default_tls_secret.or(file.default_tls_secret),
            default_tls_cert: self.default_tls_cert.or(file.default_tls_cert),
            default_tls_key: self.default_tls_key.or(file.default_tls_key),
            admin_listen: self.admin_listen.or(file.admin_listen),
            ingress_class: self.ingress_class.or(file.ingress_class),
            controller_name: self.controller_name.or(file.controller_name),
            ingress_nginx_compat: self.ingress_nginx_compat.or(file.ingress_nginx_compat),
            ingress_nginx_controller: self
                .ingress_nginx_controller
                .or(file.ingress_nginx_controller),
            ingress_nginx_class: self.ingress_nginx_class.or(file.ingress_nginx_class),
            ingress_nginx_configmap: self
                .ingress_nginx_configmap
                .or(file.ingress_nginx_configmap),
            default_backend_service: self
                .default_backend_service
                .or(file.default_backend_service),
            proxy_protocol: self.proxy_protocol.or(file.proxy_protocol),
            watch_ingress_without_class: self
                .watch_ingress_without_class
                .or(file.watch_ingress_without_class),
            publish_status: self.publish_status.or(file.publish_status),
            threads: self.threads.or(file.threads),
            work_stealing: self.work_stealing.or(file.work_stealing),
            trusted_proxies: if self.trusted_proxies.is_empty() {
                file.trusted_proxies
            } else {
                self.trusted_proxies
            },
            access_log: self.access_log.or(file.access_log),
            request_metrics: self.request_metrics.or(file.request_metrics),
            http1_engine: self.http1_engine.or(file.http1_engine),
            server_header: self.server_header.or(file.server_header),
            pass_server_header: self.pass_server_header.or(file.pass_server_header),
            upstream_connect_timeout: self
                .upstream_connect_timeout
                .or(file.upstream_connect_timeout),
            upstream_read_timeout: self.upstream_read_timeout.or(file.upstream_read_timeout),
            upstream_send_timeout: self.upstream_send_timeout.or(file.upstream_send_timeout),
            upstream_idle_timeout: self.upstream_idle_timeout.or(file.upstream_idle_timeout),
            upstream_attempts: self.upstream_attempts.or(file.upstream_attempts),
            max_body_size: self.max_body_size.or(file.max_body_size),
            max_header_size: self.max_header_size.or(file.max_header_size),
            max_uri_length: self.max_uri_length.or(file.max_uri_length),
            client_header_timeout: self.client_header_timeout.or(file.client_header_timeout),
            client_body_timeout: self.client_body_timeout.or(file.client_body_timeout),
            keepalive_timeout: self.keepalive_timeout.or(file.keepalive_timeout),
            shutdown_grace_period: self.shutdown_grace_period.or(file.shutdown_grace_period),
            shutdown_drain_timeout: self.shutdown_drain_timeout.or(file.shutdown_drain_timeout),
            kubeconfig: self.kubeconfig.or(file.kubeconfig),
            watch_namespace: self.watch_namespace.or(file.watch_namespace),
            publish_address: if self.publish_address.is_empty() {
                file.publish_address
            } else {
                self.publish_address
            },
            election_namespace: self.election_namespace.or(file.election_namespace),
            election_lease_name: self.election_lease_name.or(file.election_lease_name),
            election_lease_duration: self
                .election_lease_duration
                .or(file.election_lease_duration),
            election_renew_period: self.election_renew_period.or(file.election_renew_period),
            gateway_listen: if self.gateway_listen.is_empty() {
                file.gateway_listen
            } else {
                self.gateway_listen
            },
            gateway_address_pool: if self.gateway_address_pool.is_empty() {
                file.gateway_address_pool
            } else {
                self.gateway_address_pool
            },
            gateway_controller_name: self
                .gateway_controller_name
                .or(file.gateway_controller_name),
        }
    }

    /// Merges the config file (if any), applies defaults and validates every value.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let flags = match self.config.clone() {
            Some(path) => self.or(Flags::from_file(&path)?),
            None => self,
        };
        let defaults = UpstreamOptions::default();
        let threads = flags
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 {
            return Err(ConfigError::Invalid {
                flag: "--threads",
                reason: "must be at least 1".into(),
            });
        }
        let trusted_proxies = flags
            .trusted_proxies
            .iter()
            .flat_map(|s| s.split(','))
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.parse())
            .collect::<Result<Vec<Cidr>, String>>()
            .map_err(|reason| ConfigError::Invalid {
                flag: "--trusted-proxies",
                reason,
            })?;
        let kubernetes = flags.kube_options()?;
        let gateway = flags.gateway_options(&kubernetes)?;
        let https_listen = match flags.https_listen.as_deref().map(str::trim) {
            Some("off") => None,
            other => Some(parse_addr(
                "--https-listen",
                other.map(str::to_string),
                "0.0.0.0:443",
            )?),
        };
        let nginx_configmap = match flags.ingress_nginx_configmap.as_deref() {
            None => crate::model::ObjectKey::new("ingress-nginx", "ingress-nginx-controller"),
            Some(v) => match v.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    crate::model::ObjectKey::new(ns, name)
                }
                _ => {
                    return Err(ConfigError::Invalid {
                        flag: "--ingress-nginx-configmap",
                        reason: format!("{v:?} is not NAMESPACE/NAME"),
                    })
                }
            },
        };
        let default_backend = match flags.default_backend_service.as_deref() {
            None => None,
            Some(v) => match v.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    Some(crate::model::ObjectKey::new(ns, name))
                }
                _ => {
                    return Err(ConfigError::Invalid {
                        flag: "--default-backend-service",
                        reason: format!("{v:?} is not NAMESPACE/NAME"),
                    })
                }
            },
        };
        let http_listen = parse_addr("--http-listen", flags.http_listen.clone(), "0.0.0.0:80")?;
        // A Gateway socket is either the Ingress listener of its protocol, exactly (the two APIs
        // share it: Gateway routes first), or a socket of its own that no Ingress listener
        // overlaps (a wildcard address and a specific one on the same port would split a port's
        // connections between them by address, which is never what was meant).
        let mut gateway = gateway;
        if let Some(g) = gateway.as_mut() {
            let sockets: Vec<(bool, SocketAddr)> = g
                .http
                .iter()
                .map(|(_, a)| (false, *a))
                .chain(g.https.iter().map(|(_, a)| (true, *a)))
                .collect();
            for (tls, socket) in sockets {
                let ingress = if tls { https_listen } else { Some(http_listen) };
                if ingress == Some(socket) {
                    g.ingress_sockets.push(socket);
                    continue;
                }
                let overlaps = |a: SocketAddr| {
                    a.port() == socket.port()
                        && (a.ip() == socket.ip()
                            || a.ip().is_unspecified()
                            || socket.ip().is_unspecified())
                };
                if overlaps(http_listen) || https_listen.is_some_and(overlaps) {
                    return Err(ConfigError::Invalid {
                        flag: "--gateway-listen",
                        reason: format!(
                            "{socket} overlaps an Ingress listener: give exactly the address of \
                             --http-listen (or, with https:, of --https-listen) to share that \
                             listener with the Ingresses, or a socket of its own"
                        ),
                    });
                }
            }
        }
        let default_tls = default_tls(
            flags.default_tls_secret,
            flags.default_tls_cert,
            flags.default_tls_key,
        )?;
        Ok(Config {
            manifests: flags.manifests,
            http_listen,
            https_redirect_port: https_listen
                .map(|a| flags.https_redirect_port.unwrap_or(a.port())),
            https_listen,
            default_tls,
            admin_listen: parse_addr("--admin-listen", flags.admin_listen, "0.0.0.0:10254")?,
            compile: CompileOptions {
                controller_name: flags
                    .controller_name
                    .unwrap_or_else(|| "portico.dev/ingress-controller".into()),
                ingress_class: flags.ingress_class.unwrap_or_else(|| "portico".into()),
                default_backend,
                proxy_protocol: flags
                    .proxy_protocol
                    .unwrap_or(false)
                    .then_some(std::time::Duration::from_secs(5)),
                nginx: flags
                    .ingress_nginx_compat
                    .unwrap_or(false)
                    .then(|| NginxCompat {
                        controller: flags
                            .ingress_nginx_controller
                            .unwrap_or_else(|| "k8s.io/ingress-nginx".into()),
                        class: flags.ingress_nginx_class.unwrap_or_else(|| "nginx".into()),
                        watch_without_class: flags.watch_ingress_without_class.unwrap_or(false),
                        configmap: nginx_configmap,
                    }),
                gateway,
            },
            threads,
            work_stealing: flags.work_stealing.unwrap_or(false),
            trusted_proxies,
            access_log: flags.access_log.unwrap_or(AccessLog::Plain),
            request_metrics: flags.request_metrics.unwrap_or(true),
            http1_engine: flags.http1_engine.unwrap_or_default(),
            server_header: ServerHeader {
                value: match flags.server_header {
                    Some(v) => {
                        http::HeaderValue::from_str(v.trim()).map_err(|_| ConfigError::Invalid {
                            flag: "--server-header",
                            reason: format!("{v:?} is not a valid header value"),
                        })?
                    }
                    None => ServerHeader::default().value,
                },
                pass_upstream: flags.pass_server_header.unwrap_or(false),
            },
            upstream: UpstreamOptions {
                connect_timeout: parse_duration(
                    "--upstream-connect-timeout",
                    flags.upstream_connect_timeout,
                    defaults.connect_timeout,
                )?,
                read_timeout: parse_duration(
                    "--upstream-read-timeout",
                    flags.upstream_read_timeout,
                    defaults.read_timeout,
                )?,
                write_timeout: parse_duration(
                    "--upstream-send-timeout",
                    flags.upstream_send_timeout,
                    defaults.write_timeout,
                )?,
                idle_timeout: parse_duration(
                    "--upstream-idle-timeout",
                    flags.upstream_idle_timeout,
                    defaults.idle_timeout,
                )?,
            },
            limits: RequestLimits {
                header: Limits {
                    max_uri_length: parse_size("--max-uri-length", flags.max_uri_length, 8 << 10)?
                        as usize,
                    max_header_size: parse_size(
                        "--max-header-size",
                        flags.max_header_size,
                        32 << 10,
                    )? as usize,
                },
                max_body_size: parse_size("--max-body-size", flags.max_body_size, 1 << 20)?,
                client_header_timeout: parse_duration(
                    "--client-header-timeout",
                    flags.client_header_timeout,
                    Duration::from_secs(60),
                )?,
                client_body_timeout: parse_duration(
                    "--client-body-timeout",
                    flags.client_body_timeout,
                    Duration::from_secs(60),
                )?,
                keepalive_timeout: parse_duration(
                    "--keepalive-timeout",
                    flags.keepalive_timeout,
                    Duration::from_secs(75),
                )?,
                upstream_attempts: match flags.upstream_attempts {
                    Some(0) => {
                        return Err(ConfigError::Invalid {
                            flag: "--upstream-attempts",
                            reason: "must be at least 1".into(),
                        })
                    }
                    Some(n) => n,
                    None => 2,
                },
            },
            shutdown_grace_period: parse_duration(
                "--shutdown-grace-period",
                flags.shutdown_grace_period,
                Duration::from_secs(10),
            )?,
            shutdown_drain_timeout: parse_duration(
                "--shutdown-drain-timeout",
                flags.shutdown_drain_timeout,
                Duration::from_secs(20),
            )?,
            kubernetes,
        })
    }

    fn kube_options(&self) -> Result<KubeOptions, ConfigError> {
        // `--publish-address` wins; else the node's IP from the downward API (hostNetwork).
        let mut publish: Vec<String> = self
            .publish_address
            .iter()
            .flat_map(|s| s.split(','))
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
            .collect();
        if publish.is_empty() {
            publish.extend(env_nonempty("NODE_IP"));
        }
        if self.publish_status == Some(false) {
            publish.clear();
        }
        let publish_addresses = publish
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<PublishAddress>, String>>()
            .map_err(|reason| ConfigError::Invalid {
                flag: "--publish-address",
                reason,
            })?;
        let lease_duration = parse_duration(
            "--election-lease-duration",
            self.election_lease_duration.clone(),
            Duration::from_secs(15),
        )?;
        let renew_period = parse_duration(
            "--election-renew-period",
            self.election_renew_period.clone(),
            Duration::from_secs(5),
        )?;
        // The holder steps down when it could not renew for 2/3 of the lease duration; it must
        // get at least one renewal attempt in before that.
        if renew_period.is_zero() || renew_period >= lease_duration * 2 / 3 {
            return Err(ConfigError::Invalid {
                flag: "--election-renew-period",
                reason: format!(
                    "must be above zero and shorter than 2/3 of the lease duration ({lease_duration:?})"
                ),
            });
        }
        Ok(KubeOptions {
            kubeconfig: self.kubeconfig.clone(),
            watch_namespace: self.watch_namespace.clone().filter(|n| !n.is_empty()),
            publish_addresses,
            election: ElectionOptions {
                namespace: self
                    .election_namespace
                    .clone()
                    .or_else(|| env_nonempty("POD_NAMESPACE"))
                    .unwrap_or_else(|| "default".into()),
                lease_name: self
                    .election_lease_name
                    .clone()
                    .unwrap_or_else(|| "portico-leader".into()),
                identity: env_nonempty("POD_NAME").unwrap_or_else(hostname),
                lease_duration,
                renew_period,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_sockets_and_address_pool() {
        let flags = |listen: &[&str], pool: &[&str]| Flags {
            http_listen: Some("127.0.0.1:8080".into()),
            https_listen: Some("off".into()),
            gateway_listen: listen.iter().map(|s| s.to_string()).collect(),
            gateway_address_pool: pool.iter().map(|s| s.to_string()).collect(),
            ..Flags::default()
        };
        assert_eq!(
            flags(&[], &["127.0.0.2"])
                .resolve()
                .unwrap()
                .compile
                .gateway,
            None
        );
        let g = flags(
            &[
                "80=0.0.0.0:18080, 8080=127.0.0.9:18081",
                "https:443=0.0.0.0:18443",
            ],
            &["127.0.0.2-127.0.0.4", "::1"],
        )
        .resolve()
        .unwrap()
        .compile
        .gateway
        .unwrap();
        assert_eq!(g.controller_name, "portico.dev/gateway-controller");
        assert_eq!(
            g.http,
            [
                (80, "0.0.0.0:18080".parse().unwrap()),
                (8080, "127.0.0.9:18081".parse().unwrap())
            ]
        );
        assert_eq!(g.https, [(443, "0.0.0.0:18443".parse().unwrap())]);
        assert_eq!(g.pool.len(), 4);
        // Without a pool, Gateways share the sockets' own addresses.
        assert_eq!(g.shared, ["127.0.0.9".parse::<std::net::IpAddr>().unwrap()]);
        for (listen, pool) in [
            (&["80"][..], &[][..]),
            (&["80=nope"], &[]),
            (&["0=127.0.0.1:1"], &[]),
            (&["80=127.0.0.1:1", "80=127.0.0.1:2"], &[]),
            (&["80=127.0.0.1:1", "https:80=127.0.0.1:2"], &[]),
            (&["tls:443=127.0.0.1:1"], &[]),
            // Overlapping the Ingress listener without being it; HTTPS on the plain one.
            (&["80=0.0.0.0:8080"], &[]),
            (&["https:443=127.0.0.1:8080"], &[]),
            (&["80=127.0.0.1:1"], &["127.0.0.5-127.0.0.2"]),
            (&["80=127.0.0.1:1"], &["x"]),
        ] {
            assert!(
                flags(listen, pool).resolve().is_err(),
                "{listen:?} {pool:?}"
            );
        }
        // Exactly the Ingress listener: shared.
        let g = flags(&["80=127.0.0.1:8080", "8081=127.0.0.1:8081"], &[])
            .resolve()
            .unwrap()
            .compile
            .gateway
            .unwrap();
        assert_eq!(g.ingress_sockets, ["127.0.0.1:8080".parse().unwrap()]);
    }

    #[test]
    fn cli_wins_over_file_and_defaults_fill_the_rest() {
        let cli = Flags {
            http_listen: Some("127.0.0.1:8080".into()),
            ..Flags::default()
        };
        let file: Flags = serde_yaml_ng::from_str(
            "http-listen: 127.0.0.1:9999\nadmin-listen: 127.0.0.1:10000\nthreads: 3\ntrusted-proxies: [10.0.0.0/8]\n",
        )
        .unwrap();
        let c = cli.or(file).resolve().unwrap();
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:10000");
        assert_eq!(c.https_listen, Some("0.0.0.0:443".parse().unwrap()));
        assert_eq!(c.default_tls, DefaultCert::Generated);
        assert_eq!(c.threads, 3);
        assert_eq!(c.trusted_proxies.len(), 1);
        assert_eq!(c.compile.ingress_class, "portico");
    }

    #[test]
    fn rejects_bad_values_and_unknown_keys() {
        let bad = Flags {
            http_listen: Some("nope".into()),
            ..Flags::default()
        };
        assert!(bad.resolve().is_err());
        assert!(serde_yaml_ng::from_str::<Flags>("htp-listen: x\n").is_err());
        let bad = Flags {
            shutdown_grace_period: Some("ten".into()),
            ..Flags::default()
        };
        assert!(bad.resolve().is_err());
    }

    #[test]
    fn https_and_default_certificate_settings() {
        let off = Flags {
            https_listen: Some("off".into()),
            ..Flags::default()
        };
        let off = off.resolve().unwrap();
        assert_eq!((off.https_listen, off.https_redirect_port), (None, None));
        let mapped = Flags {
            https_listen: Some("0.0.0.0:8443".into()),
            https_redirect_port: Some(443),
            ..Flags::default()
        };
        assert_eq!(mapped.resolve().unwrap().https_redirect_port, Some(443));
        let file: Flags = serde_yaml_ng::from_str(
            "default-tls-secret: ingress/wildcard
",
        )
        .unwrap();
        assert_eq!(
            file.resolve().unwrap().default_tls,
            DefaultCert::Secret(ObjectKey::new("ingress", "wildcard"))
        );
        let files = Flags {
            default_tls_cert: Some("c.pem".into()),
            default_tls_key: Some("k.pem".into()),
            ..Flags::default()
        };
        assert!(matches!(
            files.resolve().unwrap().default_tls,
            DefaultCert::Files { .. }
        ));
        for bad in [
            Flags {
                default_tls_cert: Some("c.pem".into()),
                ..Flags::default()
            },
            Flags {
                default_tls_secret: Some("no-namespace".into()),
                ..Flags::default()
            },
            Flags {
                default_tls_secret: Some("a/b".into()),
                default_tls_key: Some("k.pem".into()),
                ..Flags::default()
            },
        ] {
            assert!(bad.resolve().is_err());
        }
    }

    #[test]
    fn kubernetes_settings_parse_and_validate() {
        let file: Flags = serde_yaml_ng::from_str(
            "kubeconfig: /k\nwatch-namespace: apps\npublish-address: [10.0.0.1, LB.example.com]\nelection-lease-name: l\n",
        )
        .unwrap();
        let c = Flags::default().or(file).resolve().unwrap().kubernetes;
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(c.watch_namespace.as_deref(), Some("apps"));
        assert_eq!(
            c.publish_addresses,
            vec![
                PublishAddress::Ip("10.0.0.1".parse().unwrap()),
                PublishAddress::Hostname("lb.example.com".into())
            ]
        );
        assert_eq!(c.election.lease_name, "l");
        assert_eq!(c.election.lease_duration, Duration::from_secs(15));
        // A side-by-side migration: no status written, whatever the addresses.
        let file: Flags = serde_yaml_ng::from_str(
            "publish-address: [10.0.0.1]\npublish-status: false\ningress-nginx-compat: true\n\
             ingress-nginx-configmap: infra/nginx-settings\n",
        )
        .unwrap();
        let c = Flags::default().or(file).resolve().unwrap();
        assert!(c.kubernetes.publish_addresses.is_empty());
        let nginx = c.compile.nginx.expect("compat on");
        assert_eq!(nginx.configmap.to_string(), "infra/nginx-settings");
        assert_eq!(
            (
                nginx.controller.as_str(),
                nginx.class.as_str(),
                nginx.watch_without_class
            ),
            ("k8s.io/ingress-nginx", "nginx", false)
        );
        let bad = Flags {
            ingress_nginx_configmap: Some("just-a-name".into()),
            ..Flags::default()
        };
        assert!(bad.resolve().is_err());
        let bad = Flags {
            default_backend_service: Some("no-namespace".into()),
            ..Flags::default()
        };
        assert!(bad.resolve().is_err());
        let good = Flags {
            default_backend_service: Some("ops/fallback".into()),
            ..Flags::default()
        };
        assert_eq!(
            good.resolve().expect("valid").compile.default_backend,
            Some(crate::model::ObjectKey::new("ops", "fallback"))
        );
        assert!("-bad-.example".parse::<PublishAddress>().is_err());
        assert!("a b".parse::<PublishAddress>().is_err());
        let bad = Flags {
            election_renew_period: Some("12s".into()),
            ..Flags::default()
        };
        assert!(
            bad.resolve().is_err(),
            "renewing after 2/3 of the lease is too late"
        );
    }
}
