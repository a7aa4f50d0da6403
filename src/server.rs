//! Assembles the Pingora server: the proxy listeners, the admin listener and the source (the
//! manifest directory with `--manifests`, else the Kubernetes cluster).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::admin::Admin;
use crate::config::Config;
use crate::dataplane::Shared;
use crate::metrics::Metrics;
use crate::request::edge::Edge;
use crate::request::h1;
use crate::request::pingora::PingoraApp;
use crate::request::policy::{Http1Engine, Policy};
use crate::source::kube::{ClientConfig, KubeSource};
use crate::source::manifests::{ManifestError, ManifestSource};
use crate::tls::{GatewaySniResolver, SniResolver, TlsError, TlsOptions};

/// Why the server could not be built.
///
/// Like every error enum in Portico, a variant writes its cause into its message and does not
/// also return it from `source()`: the logs print the message alone, and `main` prints the chain,
/// which would show the cause twice.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({flag}): {error}")]
    Listen {
        flag: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Manifests(#[from] ManifestError),
    #[error("default TLS certificate: {0}")]
    Tls(TlsError),
    #[error("HTTPS listener: {0}")]
    TlsListener(String),
    #[error("metrics: {0}")]
    Metrics(prometheus::Error),
}

/// A built server, ready to run.
pub struct Built {
    pub server: Server,
    pub shared: Arc<Shared>,
}

/// Checks that a listen address is free. Pingora retries a busy bind for 30 s and then panics
/// inside the service while the process stays up; failing here is clearer.
fn check_free(flag: &'static str, addr: SocketAddr) -> Result<(), ServerError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|error| ServerError::Listen { flag, addr, error })
}

/// The Gateway API sockets to bind, and whether each is TLS: not those that are the Ingress
/// listeners (bound once, as those). A TLS socket on a wildcard address is bound once per pool
/// address, so that its certificate resolver knows which Gateway a handshake is for.
fn gateway_sockets(config: &Config) -> impl Iterator<Item = (SocketAddr, bool)> + '_ {
    config.compile.gateway.iter().flat_map(|g| {
        let own = move |a: &&(u16, SocketAddr)| !g.ingress_sockets.contains(&a.1);
        let plain = g.http.iter().filter(own).map(|(_, a)| (*a, false));
        let tls = g.https.iter().filter(own).flat_map(move |(_, a)| {
            let per_address: Vec<SocketAddr> = if a.ip().is_unspecified() && !g.pool.is_empty() {
                g.pool
                    .iter()
                    .filter(|ip| ip.is_ipv4() == a.is_ipv4())
                    .map(|ip| SocketAddr::new(*ip, a.port()))
                    .collect()
            } else {
                vec![*a]
            };
            per_address.into_iter().map(|a| (a, true))
        });
        plain.chain(tls)
    })
}

/// Builds the server from the configuration. `upgrade` is true when this process takes over the
/// listeners of a running one (Pingora's graceful upgrade); the ports are then busy by design.
pub fn build(config: &Config, upgrade: bool) -> Result<Built, ServerError> {
    if !upgrade {
        check_free("--http-listen", config.http_listen)?;
        if let Some(addr) = config.https_listen {
            check_free("--https-listen", addr)?;
        }
        check_free("--admin-listen", config.admin_listen)?;
        for addr in gateway_sockets(config) {
            check_free("--gateway-listen", addr.0)?;
        }
    }
    tracing::info!(
        "Portico {}: HTTP on {}, HTTPS on {}, admin on {} (/healthz, /readyz, /metrics); the \
         proxy listeners open once the first snapshot is loaded",
        env!("CARGO_PKG_VERSION"),
        config.http_listen,
        config
            .https_listen
            .map_or_else(|| "off".to_string(), |a| a.to_string()),
        config.admin_listen
    );
    let metrics = Metrics::new().map_err(ServerError::Metrics)?;
    let gateway_tls = gateway_sockets(config).any(|(_, tls)| tls);
    let tls = match config.https_listen {
        Some(_) => TlsOptions::from_config(&config.default_tls).map_err(ServerError::Tls)?,
        None if gateway_tls => {
            TlsOptions::from_config(&config.default_tls).map_err(ServerError::Tls)?
        }
        None => TlsOptions::default(),
    };
    let shared = Shared::with_tls(config.compile.clone(), metrics, tls);

    let conf = ServerConf {
        threads: config.threads,
        // After the grace period our signal watcher already waited, Pingora waits this long for
        // in-flight requests before it stops the runtimes.
        grace_period_seconds: Some(config.shutdown_drain_timeout.as_secs()),
        // By default one single-threaded tokio runtime per worker, as nginx has one event loop
        // per worker: a connection stays on the thread it was given (at random), and no request
        // pays for the work-stealing scheduler's bookkeeping (about 1,100 instructions).
        work_stealing: config.work_stealing,
        graceful_shutdown_timeout_seconds: Some(1),
        // Retries are decided per request (idempotent, not answered yet, attempts left).
        // A route may allow more attempts (ingress-nginx's proxy-next-upstream-tries).
        max_retries: config
            .limits
            .upstream_attempts
            .max(crate::model::MAX_UPSTREAM_ATTEMPTS),
        upgrade_sock: format!("/tmp/portico_upgrade_{}.sock", config.admin_listen.port()),
        pid_file: format!("/tmp/portico_{}.pid", config.admin_listen.port()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(
        pingora_core::server::configuration::Opt {
            upgrade,
            ..Default::default()
        },
        conf,
    );
    server.bootstrap();
    let conf = server.configuration.clone();

    let policy = Arc::new(Policy {
        shared: shared.clone(),
        upstream: config.upstream.clone(),
        trusted_proxies: config.trusted_proxies.clone().into(),
        access_log: config.access_log,
        limits: config.limits,
        request_metrics: config.request_metrics,
        https_redirect_port: config.https_redirect_port,
        server_header: config.server_header.clone(),
        auth_client: crate::request::policy::auth_client(),
    });
    let pingora = Arc::new(pingora_proxy::http_proxy(
        &conf,
        PingoraApp {
            policy: policy.clone(),
        },
    ));
    let h1 = (config.http1_engine == Http1Engine::Portico).then(|| {
        Arc::new(h1::Engine {
            policy: policy.clone(),
            connector: TransportConnector::new(Some(ConnectorOptions::from_server_conf(&conf))),
            // Idle upstream connections kept per worker thread: ingress-nginx's
            // upstream-keepalive-connections default (per worker), and at least Pingora's pool.
            pool_size: conf.upstream_keepalive_pool_size.max(320),
            fallback: pingora.clone(),
        })
    });
    // Portico's engine keeps no buffer for an idle connection, so the listeners get none either
    // (Pingora's default is a 64 KiB read buffer per connection, held for its whole life).
    let l4_buffer = match h1 {
        Some(_) => L4BufferSettings::unbuffered(),
        None => L4BufferSettings::default(),
    };
    let edge = Edge {
        app: pingora,
        h1,
        header_timeout: config.limits.client_header_timeout,
        expired: shared.metrics.client_header_timeouts.clone(),
        shared: shared.clone(),
    };
    let mut proxy = Service::new("portico proxy".to_string(), edge);
    // PROXY protocol on the TLS listener: the header comes before the handshake.
    proxy
        .endpoints()
        .set_pre_tls_callback(Arc::new(crate::request::proxy_protocol::PreTls {
            shared: shared.clone(),
        }));
    proxy.add_listener(ListenerConfig::tcp(config.http_listen.to_string()).l4_buffer(l4_buffer));
    // Gateway API sockets: the same service; a request there is told apart by its local
    // address (see `routing::gateway::plane`).
    for (addr, tls) in gateway_sockets(config) {
        tracing::info!(
            "Gateway API: {} listeners served on {addr}",
            if tls { "HTTPS" } else { "HTTP" }
        );
        let listener = ListenerConfig::tcp(addr.to_string()).l4_buffer(l4_buffer);
        if !tls {
            proxy.add_listener(listener);
            continue;
        }
        // The certificate is chosen per Gateway: this socket's resolver knows its address.
        let mut settings = TlsSettings::intermediate("", "")
            .map_err(|e| ServerError::TlsListener(e.to_string()))?;
        settings.set_cert_resolver(Arc::new(GatewaySniResolver::new(shared.clone(), addr)));
        settings.enable_h2();
        proxy.add_listener(listener.tls(settings));
    }
    if let Some(addr) = config.https_listen {
        // rustls: TLS 1.2 and 1.3 only, AEAD suites with forward secrecy only (ring's defaults).
        // No certificate files: the resolver picks one per handshake from the snapshot.
        let mut tls = TlsSettings::intermediate("", "")
            .map_err(|e| ServerError::TlsListener(e.to_string()))?;
        tls.set_cert_resolver(Arc::new(SniResolver::new(shared.clone())));
        tls.enable_h2();
        proxy.add_listener(
            ListenerConfig::tcp(addr.to_string())
                .tls(tls)
                .l4_buffer(l4_buffer),
        );
    }
    let proxy = server.add_service(proxy);

    let mut admin = Service::new(
        "portico admin".to_string(),
        Admin::new(shared.clone(), config.http_listen),
    );
    admin.add_tcp(&config.admin_listen.to_string());
    admin.threads = Some(1);
    server.add_service(admin);

    server.add_service(background_service(
        "health checks",
        crate::health::HealthChecker {
            shared: shared.clone(),
        },
    ));

    match &config.manifests {
        Some(dir) => {
            let source = ManifestSource::new(dir.clone(), shared.clone())?;
            tracing::info!(
                "source: the Kubernetes YAML/JSON files in {} (--manifests), watched for changes",
                dir.display()
            );
            let source = server.add_service(background_service("manifests source", source));
            // The proxy listeners open only once the first snapshot is published, so that no
            // request is answered from an empty table (after a start or an upgrade).
            proxy.add_dependency(&source);
        }
        None => {
            let found = ClientConfig::detect(&config.kubernetes);
            if matches!(found, ClientConfig::Missing { .. }) {
                tracing::warn!("{}", found.describe());
            } else {
                tracing::info!("{}", found.describe());
            }
            let source = KubeSource::new(config.kubernetes.clone(), shared.clone());
            let source = server.add_service(background_service("kubernetes source", source));
            proxy.add_dependency(&source);
        }
    }
    Ok(Built { server, shared })
}

/// Signals for a process: SIGTERM drains gracefully (readiness off at once, keep accepting for the
/// grace period, then stop accepting and drain), SIGINT stops fast, SIGQUIT hands the listeners
/// to a new process (graceful upgrade).
pub struct Signals {
    pub shared: Arc<Shared>,
    pub grace_period: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                self.shared.start_draining();
                tracing::info!(grace = ?self.grace_period, "SIGTERM: not ready; still accepting during the grace period");
                tokio::time::sleep(self.grace_period).await;
                tracing::info!("grace period over: no longer accepting; draining in-flight requests");
                self.shared.stop_accepting();
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => {
                // The new process answers /readyz from now on; this one only drains.
                tracing::info!("SIGQUIT: handing the listeners to the new process");
                self.shared.start_draining();
                self.shared.stop_accepting();
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}

/// Runs the server until `shutdown` fires. Returns when the runtimes have stopped.
pub fn run(server: Server, shutdown: Box<dyn ShutdownSignalWatch + Send>) {
    server.run(RunArgs {
        shutdown_signal: shutdown,
    });
}

/// Ends the process as soon as a graceful shutdown or upgrade has nothing left in flight, instead
/// of waiting out Pingora's whole drain timeout (which stays the upper bound). Idle keep-alive
/// connections are closed, which HTTP/1.1 clients handle by retrying on a new connection.
pub fn exit_when_drained(shared: Arc<Shared>) {
    std::thread::spawn(move || {
        while !shared.has_stopped_accepting() {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let Pingora close the listeners (or send them to the new process) and read the
        // requests of connections it accepted last; then wait for a quiet half second.
        std::thread::sleep(Duration::from_millis(1000));
        let mut quiet = 0;
        while quiet < 5 {
            quiet = if shared.metrics.inflight.get() > 0 {
                0
            } else {
                quiet + 1
            };
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::info!("drained: exiting");
        std::process::exit(0);
    });
}
