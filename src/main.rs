//! The `portico` binary: parse the configuration, set up logging, run. Nothing else.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use portico::config::{Cli, Command};
use portico::server::{self, Signals};

// Measured with perf/load.sh and callgrind: glibc malloc and free were about a fifth of the
// proxy's instructions per request (Pingora allocates per request: headers, tasks, channels).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Prints a start-up error on one line, its causes after it (`error: cause: cause`), and exits
/// with status 1. Each error type writes its own cause into its message, so every cause appears
/// once; no backtrace, even with `RUST_BACKTRACE` set: these are configuration errors, not bugs.
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let demo = matches!(cli.command, Some(Command::Demo));
    let upgrade = cli.upgrade;
    let mut flags = cli.flags;
    if demo {
        let dir = portico::demo::demo_dir().context("creating the demo directory")?;
        flags.manifests = Some(dir);
        flags.http_listen.get_or_insert("127.0.0.1:8080".into());
        flags.https_listen.get_or_insert("127.0.0.1:8443".into());
        flags.admin_listen.get_or_insert("127.0.0.1:10254".into());
        if flags.gateway_listen.is_empty() {
            flags.gateway_listen = vec![portico::demo::GATEWAY_LISTEN.into()];
        }
    }
    let config = flags.resolve()?;
    portico::telemetry::init();
    let built = server::build(&config, upgrade)?;
    if demo {
        portico::demo::start_backends().context("starting the demo's echo backends")?;
        if let Some(dir) = &config.manifests {
            println!(
                "{}",
                portico::demo::banner(
                    config.http_listen,
                    config.https_listen,
                    config.admin_listen,
                    config
                        .compile
                        .gateway
                        .as_ref()
                        .and_then(|g| g.http.first().map(|(_, socket)| *socket)),
                    dir
                )
            );
        }
    }
    let signals = Signals {
        shared: built.shared.clone(),
        grace_period: config.shutdown_grace_period,
    };
    server::exit_when_drained(built.shared.clone());
    server::run(built.server, Box::new(signals));
    Ok(())
}
