//! `muster-coordinator`: see the library docs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use muster_coordinator::cli::{self, AdminClient};
use muster_coordinator::config::{ServeArgs, Settings};

/// Keeps EC2 nodes answerable by name: node state, DNS, and the API agents
/// and operators talk to.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the coordinator: HTTPS API, embedded DNS, store.
    Serve(Box<ServeArgs>),
    /// Manage clusters (talks to a running coordinator: MUSTER_ADDR, MUSTER_TOKEN, MUSTER_CACERT).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Inspect nodes (talks to a running coordinator: MUSTER_ADDR, MUSTER_TOKEN, MUSTER_CACERT).
    #[command(subcommand)]
    Node(NodeCommand),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Record a cluster and print its join token (shown only this once).
    Create {
        /// Cluster name: a lowercase DNS label.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List clusters.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one cluster.
    Show {
        /// Cluster name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List nodes.
    Ls {
        /// Only nodes of this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a node: terminate its instance (the node goes terminating, then
    /// terminated once EC2 says so, and its DNS records go away).
    Rm {
        /// Cluster name.
        cluster: String,
        /// Node name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one node, its host facts and its events.
    Show {
        /// Cluster name.
        cluster: String,
        /// Node name (the instance id for nodes that joined by themselves).
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code for a bad setting (EX_USAGE... sysexits' EX_CONFIG is 78, but
/// DESIGN.md §7 asks for 64 on any bad value).
const EXIT_BAD_CONFIG: u8 = 64;

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // journald stamps lines itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: encoding JSON: {e}"),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn admin(command: Command) -> Result<(), cli::CliError> {
    let client = AdminClient::from_env()?;
    match command {
        Command::Cluster(ClusterCommand::Create { name, json }) => {
            let created = client.create_cluster(&name).await?;
            if json {
                print_json(&created);
            } else {
                print!(
                    "{}",
                    cli::clusters_table(std::slice::from_ref(&created.cluster))
                );
                println!("\njoin token (shown once): {}", created.join_token);
            }
        }
        Command::Cluster(ClusterCommand::Ls { json }) => {
            let clusters = client.clusters().await?;
            if json {
                print_json(&clusters);
            } else {
                print!("{}", cli::clusters_table(&clusters));
            }
        }
        Command::Cluster(ClusterCommand::Show { name, json }) => {
            let cluster = client.cluster(&name).await?;
            if json {
                print_json(&cluster);
            } else {
                print!("{}", cli::clusters_table(std::slice::from_ref(&cluster)));
            }
        }
        Command::Node(NodeCommand::Ls { cluster, json }) => {
            let nodes = client.nodes(cluster.as_deref()).await?;
            if json {
                print_json(&nodes);
            } else {
                print!("{}", cli::nodes_table(&nodes));
            }
        }
        Command::Node(NodeCommand::Rm {
            cluster,
            name,
            json,
        }) => {
            let node = client.remove_node(&cluster, &name).await?;
            if json {
                print_json(&node);
            } else {
                print!("{}", cli::nodes_table(std::slice::from_ref(&node)));
            }
        }
        Command::Node(NodeCommand::Show {
            cluster,
            name,
            json,
        }) => {
            let detail = client.node(&cluster, &name).await?;
            if json {
                print_json(&detail);
            } else {
                print!("{}", cli::node_text(&detail));
            }
        }
        Command::Serve(_) => unreachable!("serve is handled in main"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_tracing();
            let settings = match Settings::load(&args) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            match muster_coordinator::serve(settings, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "coordinator failed");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        command => {
            muster_coordinator::install_crypto_provider();
            match admin(command).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ cli::CliError::Setting { .. }) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
