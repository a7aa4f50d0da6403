//! Logging: `tracing` for Portico's diagnostics, with Pingora's `log` output bridged in, on
//! stderr. The access log is not a `tracing` event: it goes to stdout, written by
//! [`crate::request::access_log`].
//!
//! Colour only on a terminal: a file, a pipe or `kubectl logs` gets plain text, and so does a
//! terminal when `NO_COLOR` is set. The access log never has colour.

use std::io::IsTerminal;

use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The diagnostics filter when `RUST_LOG` is unset: Portico at `info`, and Pingora only from
/// `warn`. Pingora's own INFO lines (`Bootstrap starting`, `Starting service: ...`, the steps of a
/// shutdown) tell an operator nothing to act on, and Portico logs its own start-up and shutdown
/// lines; `RUST_LOG=debug` (or `RUST_LOG=info,pingora_core=info`) brings them back.
pub const DEFAULT_FILTER: &str =
    "info,pingora=warn,pingora_core=warn,pingora_proxy=warn,pingora_load_balancing=warn";

/// Whether the diagnostics get ANSI colours: only on a terminal, and not when `NO_COLOR` is set
/// to a non-empty value (<https://no-color.org>).
pub fn use_colour(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. `RUST_LOG` sets the level of the diagnostic logs (default
/// [`DEFAULT_FILTER`]). Calling it twice is harmless (the second call does nothing).
pub fn init() {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    // The filter's level hint matters for speed: `try_init` sets the `log` crate's max level from
    // it. Without one it is TRACE, and each of Pingora's ~20 `debug!`/`trace!` calls per request
    // is turned into a record and offered to the layer (measured: 10% of the proxy's instructions
    // per request). EnvFilter gives its own hint (`log_crate_max_level_follows_the_filter`).
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_filter(env);
    let _ = tracing_subscriber::registry().with(diagnostics).try_init();
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
        super::init();
        assert_eq!(log::max_level(), log::LevelFilter::Info);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(super::use_colour(true, None));
        assert!(super::use_colour(true, Some(OsStr::new(""))));
        assert!(!super::use_colour(true, Some(OsStr::new("1"))));
        assert!(!super::use_colour(false, None));
        assert!(!super::use_colour(false, Some(OsStr::new("1"))));
    }
}
