//! Logging: `tracing` for Portico, with Pingora's `log` output bridged in. The access log
//! (target `portico::access`) goes to stdout, plain or JSON; everything else to stderr.

use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::proxy::AccessLog;

const ACCESS: &str = "portico::access";

/// Installs the global subscriber. `RUST_LOG` sets the level of the diagnostic logs (default
/// `info`). Calling it twice is harmless (the second call does nothing).
pub fn init(access_log: AccessLog) {
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_filter(filter_fn(|m| m.target() != ACCESS));
    let access = match access_log {
        AccessLog::Off => None,
        AccessLog::Plain => Some(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stdout)
                .with_target(false)
                .with_filter(filter_fn(|m| m.target() == ACCESS))
                .boxed(),
        ),
        AccessLog::Json => Some(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stdout)
                .with_target(false)
                .with_filter(filter_fn(|m| m.target() == ACCESS))
                .boxed(),
        ),
    };
    let _ = tracing_subscriber::registry()
        .with(diagnostics)
        .with(access)
        .try_init();
}
