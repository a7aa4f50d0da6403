//! Logging: `tracing` for Portico, with Pingora's `log` output bridged in. The access log
//! (target `portico::access`) goes to stdout, plain or JSON; everything else to stderr.

use tracing_subscriber::filter::{filter_fn, EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::request::policy::AccessLog;

const ACCESS: &str = "portico::access";

/// The access log's events only (they are all INFO).
fn access_filter() -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool>
{
    filter_fn(|m| m.target() == ACCESS && *m.level() <= LevelFilter::INFO)
        .with_max_level_hint(LevelFilter::INFO)
}

/// Installs the global subscriber. `RUST_LOG` sets the level of the diagnostic logs (default
/// `info`). Calling it twice is harmless (the second call does nothing).
pub fn init(access_log: AccessLog) {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The level hints matter for speed: `try_init` sets the `log` crate's max level from them.
    // Without them it is TRACE, and each of Pingora's ~20 `debug!`/`trace!` calls per request
    // is turned into a record and offered to every layer (measured: 10% of the proxy's
    // instructions per request).
    let diagnostics_level = env.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(env)
        // The closure checks the level too: a hint must never be exceeded (debug builds assert it).
        .with_filter(
            filter_fn(move |m| m.target() != ACCESS && *m.level() <= diagnostics_level)
                .with_max_level_hint(diagnostics_level),
        );
    let access = match access_log {
        AccessLog::Off => None,
        AccessLog::Plain => Some(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stdout)
                .with_target(false)
                .with_filter(access_filter())
                .boxed(),
        ),
        AccessLog::Json => Some(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stdout)
                .with_target(false)
                .with_filter(access_filter())
                .boxed(),
        ),
    };
    let _ = tracing_subscriber::registry()
        .with(diagnostics)
        .with(access)
        .try_init();
}

#[cfg(test)]
mod tests {
    /// Pingora logs through the `log` crate on every request; those calls must stop at the
    /// max-level check unless debugging was asked for.
    #[test]
    fn log_crate_max_level_follows_the_filter() {
        if std::env::var_os("RUST_LOG").is_some() {
            return;
        }
        super::init(crate::request::policy::AccessLog::Plain);
        assert_eq!(log::max_level(), log::LevelFilter::Info);
    }
}
