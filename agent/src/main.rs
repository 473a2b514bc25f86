//! `muster-agent`: the node daemon (`run`) and its status command
//! (`status`). Everything but the wiring lives in the library.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches};
use muster_agent::settings::Settings;
use muster_agent::{logging, query, Cli, Command};
use muster_proto::settings::EXIT_INVALID;
use tracing::{error, info};

/// How long the blocking pool's idle thread is kept: longer than the
/// longest heartbeat interval a coordinator hands out in practice.
const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(120);

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Run(args) => {
            logging::init("info");
            let settings = match Settings::load(&args, matches.subcommand_matches("run")) {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            match run(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::PrepareVolume(args) => {
            logging::init("info");
            match muster_agent::volume::command(&args, &mut std::io::stdout()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(if e.is_usage() { EXIT_INVALID } else { 1 })
                }
            }
        }
        Command::Status(args) => {
            logging::init("warn");
            let code = query::status_command(&args, &mut std::io::stdout(), &mut std::io::stderr());
            ExitCode::from(code)
        }
    }
}

fn run(settings: Settings) -> anyhow::Result<()> {
    info!(
        version = muster_agent::AGENT_VERSION,
        coordinator = %settings.coordinator_url,
        cluster = %settings.cluster,
        state_dir = %settings.state_dir.display(),
        identity = settings.byon.as_ref().map_or("imds", |_| "bring-your-own"),
        imds = %settings.byon.as_ref().map_or(settings.imds_endpoint.as_str(), |_| "not asked"),
        config = ?settings.config_file,
        "muster-agent starting"
    );
    // One thread: the agent waits on timers and sockets nearly all the
    // time, and a second worker only cost memory and cross-thread
    // wake-ups. The reads of /proc for the host facts go to the blocking
    // pool, whose thread outlives the interval between heartbeats rather
    // than being made again for each.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown =
            muster_agent::shutdown_signal().context("cannot listen for SIGTERM and SIGINT")?;
        muster_agent::run(settings, shutdown)
            .await
            .context("muster-agent stopped")
    })
}
