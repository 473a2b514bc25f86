//! `muster-coordinator`: the command line. This file is the clap tree and
//! the dispatch to the library: `serve` runs the coordinator
//! ([`muster_coordinator::serve`]); every other command is a client of a
//! running one ([`muster_coordinator::cli::commands`]).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use muster_coordinator::cli::{commands, AdminClient, CliError};
use muster_coordinator::config::{ServeArgs, Settings};
use muster_proto::launch::{IamOptions, LaunchSpec, ProviderOptions, VpcOptions};
use muster_proto::settings::EXIT_INVALID;
use muster_proto::CreateClusterRequest;

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
    Cluster(Box<ClusterCommand>),
    /// Inspect nodes (talks to a running coordinator: MUSTER_ADDR, MUSTER_TOKEN, MUSTER_CACERT).
    #[command(subcommand)]
    Node(NodeCommand),
    /// The coordinator's own secrets (talks to a running coordinator).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The coordinator's own health: version, uptime, EC2's standing,
    /// connections (talks to a running coordinator).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The DNS provider (talks to a running coordinator).
    #[command(subcommand)]
    Dns(DnsCommand),
    /// Print the cloud-init user data the launcher passes to RunInstances
    /// for CLUSTER, for instances launched by other means. It carries a
    /// join token minted for it (shown once on stderr, stored hashed) that
    /// registers any instance EC2 confirms. The user data goes to stdout
    /// (gzipped bytes when it is over 16 KiB as text), or to --output.
    Userdata {
        /// Cluster name.
        cluster: String,
        /// Write the user data to this file (0600) instead of stdout.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
        /// The join token in it stops working after this long, e.g. "7d"
        /// [default: never]
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        /// Print JSON: the token, the user data (base64, and as text when
        /// not gzipped) and the agent it installs.
        #[arg(long)]
        json: bool,
    },
    /// Copy the running coordinator's store, online and consistent (SQLite's
    /// backup API), to FILE (0600). The data dir's CA, keys and tokens are
    /// not in it: copy those once with the filesystem (docs/operations.md).
    Backup {
        /// Where to write the copy.
        file: std::path::PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bring a backup back as the store of a data dir that has none (the
    /// coordinator stopped, or a new data dir); `serve` then starts from it.
    Restore {
        /// A file `backup` wrote.
        file: std::path::PathBuf,
        /// The data dir to restore into.
        #[arg(long, default_value = muster_coordinator::config::DEFAULT_DATA_DIR)]
        data_dir: std::path::PathBuf,
    },
    /// Dry-run an instance launch in every region with the AWS credentials
    /// this process finds (the chain `serve` uses); valid if one region
    /// succeeds.
    CheckCredentials {
        /// Regions to try, comma-separated [default: the commercial regions]
        #[arg(long, value_delimiter = ',')]
        regions: Vec<String>,
        /// Image to dry-run with [default: any x86_64 image Amazon owns in the region]
        #[arg(long)]
        ami: Option<String>,
        /// Instance type to dry-run with.
        #[arg(long, default_value = "t3.micro")]
        instance_type: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What `cluster create` launches; give all five to launch nodes, none for
/// a cluster agents join on their own.
#[derive(Debug, clap::Args)]
struct LaunchArgs {
    /// Region to launch in, e.g. us-east-1.
    #[arg(long, requires_all = ["instance_type", "count", "disk_gb", "ami"])]
    region: Option<String>,
    /// Instance type, e.g. t3.micro.
    #[arg(long, requires = "region")]
    instance_type: Option<String>,
    /// Nodes to launch.
    #[arg(long, requires = "region")]
    count: Option<u32>,
    /// Size of each node's gp2 data volume, GiB.
    #[arg(long, requires = "region")]
    disk_gb: Option<u32>,
    /// Image (AMI) to launch; nodes fetch the agent from this coordinator
    /// when it serves one, else the image must carry it.
    #[arg(long, requires = "region")]
    ami: Option<String>,
    /// Use this VPC instead of the muster-vpc.
    #[arg(long, requires = "region")]
    vpc_id: Option<String>,
    /// Use only this subnet (repeat for several, in order of preference).
    #[arg(long = "subnet", requires = "region")]
    subnets: Vec<String>,
    /// Launch with this security group instead of making muster-NAME (repeatable).
    #[arg(long = "security-group", requires = "region")]
    security_groups: Vec<String>,
    /// IAM instance profile nodes run with.
    #[arg(long, requires = "region")]
    instance_profile: Option<String>,
    /// Use this existing key pair instead of making one.
    #[arg(long, requires = "region")]
    key_name: Option<String>,
    /// Who may reach port 22 (CIDR); no SSH rule without it.
    #[arg(long, requires = "region")]
    admin_cidr: Option<String>,
    /// Allow --admin-cidr 0.0.0.0/0.
    #[arg(long, requires = "admin_cidr")]
    allow_ssh_from_anywhere: bool,
}

impl LaunchArgs {
    fn spec(self) -> Option<LaunchSpec> {
        let region = self.region?;
        let vpc =
            (self.vpc_id.is_some() || !self.subnets.is_empty() || !self.security_groups.is_empty())
                .then_some(VpcOptions {
                    id: self.vpc_id,
                    subnets: self.subnets,
                    security_groups: self.security_groups,
                });
        Some(LaunchSpec {
            region,
            instance_type: self.instance_type.unwrap_or_default(),
            count: self.count.unwrap_or_default(),
            disk_gb: self.disk_gb.unwrap_or_default(),
            ami: self.ami.unwrap_or_default(),
            provider_options: ProviderOptions {
                vpc,
                iam: self.instance_profile.map(|name| IamOptions {
                    instance_profile_name: name,
                }),
            },
            key_name: self.key_name,
            admin_cidr: self.admin_cidr,
            allow_ssh_from_anywhere: self.allow_ssh_from_anywhere,
        })
    }
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Create a cluster and print its join token (shown only this once);
    /// with --region and the rest, launch its nodes on EC2.
    Create {
        /// Cluster name: a lowercase DNS label.
        name: String,
        #[command(flatten)]
        launch: Box<LaunchArgs>,
        /// Also mint a bring-your-own token, for machines without IMDS.
        #[arg(long)]
        byon: bool,
        /// The most nodes that bring-your-own token may create [default: 10]
        #[arg(long, requires = "byon")]
        byon_max_nodes: Option<u32>,
        /// Remove the cluster, as `cluster rm` does, after this long, e.g.
        /// "2h" (`cluster extend` moves the end) [default: never]
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        /// Wait, with a progress bar, until every node is deployed or failed;
        /// with --json, print {"created": …, "nodes": […]}.
        #[arg(long, requires = "region")]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        wait_timeout: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add BY (e.g. "1h") to the lifetime of a cluster created with
    /// --expires-in.
    Extend {
        /// Cluster name.
        name: String,
        /// How much longer it lives, e.g. "1h".
        #[arg(value_parser = humantime::parse_duration)]
        by: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mint a bring-your-own token (shown only this once): machines without
    /// IMDS join with it and name themselves; earlier tokens stay valid.
    ByonToken {
        /// Cluster name.
        name: String,
        /// The most nodes the token may create [default: 10]
        #[arg(long)]
        max_nodes: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a cluster's tokens: kind, id, when minted, expiry, uses (never
    /// the secrets).
    Tokens {
        /// Cluster name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one of a cluster's tokens at once, by the id `tokens` shows
    /// (`join`, the cluster's own, expires now: `rotate-token` makes a new
    /// one).
    RevokeToken {
        /// Cluster name.
        name: String,
        /// Token id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let a bring-your-own machine removed by `node rm` join again.
    Admit {
        /// Cluster name.
        name: String,
        /// The machine's node id (`m-…`, the instance id `node ls` shows).
        machine: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Grow or shrink a launched cluster to COUNT nodes.
    Scale {
        /// Cluster name.
        name: String,
        /// Nodes the cluster should hold.
        count: u32,
        /// Wait, with a progress bar, until every node is deployed or failed;
        /// with --json, print {"scaled": …, "nodes": […]}.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        wait_timeout: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a cluster: terminate its instances, wait until EC2 says they
    /// are terminated, delete the security group and key pair muster made.
    Rm {
        /// Cluster name.
        name: String,
        /// Return once the removal has started.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        wait_timeout: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace a cluster's join token (shown only this once); the old one
    /// stops working at once. Nodes keep their credentials.
    RotateToken {
        /// Cluster name.
        name: String,
        /// The new token stops working after this long, e.g. "24h"
        /// [default: never]
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
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
enum AdminCommand {
    /// Replace the admin token: the new one is printed (shown only this
    /// once) and written to the coordinator's data dir; the old one stops
    /// working at once.
    RotateToken {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a viewer token (shown only this once; only its hash is kept):
    /// it reads the admin API and signs in to the web console at /ui/, and
    /// changes nothing. The one before it, and the console sessions it
    /// opened, stop working at once.
    ViewerToken {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DnsCommand {
    /// How far the external DNS provider has got: changes pending, names
    /// it does not own, the last change and the last error.
    Status {
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
    /// Drain a node: take it out of its cluster's round robin at once and
    /// keep it out, whatever its agent says and across its restarts, until
    /// `node undrain`. It keeps its own names.
    Drain {
        /// Cluster name.
        cluster: String,
        /// Node name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lift an operator's drain: the node goes back to what its agent
    /// reports (deployed, or unhealthy if its checks fail).
    Undrain {
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

/// Runs a `cluster` command.
async fn cluster(client: &AdminClient, command: ClusterCommand) -> Result<(), CliError> {
    match command {
        ClusterCommand::Create {
            name,
            launch,
            byon,
            byon_max_nodes,
            expires_in,
            wait,
            wait_timeout,
            json,
        } => {
            let req = CreateClusterRequest {
                name,
                launch: launch.spec(),
                byon,
                byon_max_nodes,
                expires_in_secs: expires_in.map(|d| d.as_secs()),
            };
            commands::cluster_create(client, &req, wait.then_some(wait_timeout), json).await
        }
        ClusterCommand::RotateToken {
            name,
            expires_in,
            json,
        } => commands::cluster_rotate_token(client, &name, expires_in, json).await,
        ClusterCommand::Extend { name, by, json } => {
            commands::cluster_extend(client, &name, by, json).await
        }
        ClusterCommand::ByonToken {
            name,
            max_nodes,
            json,
        } => commands::cluster_byon_token(client, &name, max_nodes, json).await,
        ClusterCommand::Tokens { name, json } => {
            commands::cluster_tokens(client, &name, json).await
        }
        ClusterCommand::RevokeToken { name, id, json } => {
            commands::cluster_revoke_token(client, &name, &id, json).await
        }
        ClusterCommand::Admit {
            name,
            machine,
            json,
        } => commands::cluster_admit(client, &name, &machine, json).await,
        ClusterCommand::Scale {
            name,
            count,
            wait,
            wait_timeout,
            json,
        } => {
            commands::cluster_scale(client, &name, count, wait.then_some(wait_timeout), json).await
        }
        ClusterCommand::Rm {
            name,
            no_wait,
            wait_timeout,
            json,
        } => commands::cluster_rm(client, &name, (!no_wait).then_some(wait_timeout), json).await,
        ClusterCommand::Ls { json } => commands::cluster_ls(client, json).await,
        ClusterCommand::Show { name, json } => commands::cluster_show(client, &name, json).await,
    }
}

/// Runs a command that talks to a running coordinator.
async fn admin(command: Command) -> Result<(), CliError> {
    let client = AdminClient::from_env()?;
    match command {
        Command::Cluster(command) => cluster(&client, *command).await,
        Command::Admin(AdminCommand::RotateToken { json }) => {
            commands::admin_rotate_token(&client, json).await
        }
        Command::Admin(AdminCommand::ViewerToken { json }) => {
            commands::admin_viewer_token(&client, json).await
        }
        Command::Status { json } => commands::status(&client, json).await,
        Command::Dns(DnsCommand::Status { json }) => commands::dns_status(&client, json).await,
        Command::Node(NodeCommand::Ls { cluster, json }) => {
            commands::node_ls(&client, cluster.as_deref(), json).await
        }
        Command::Node(NodeCommand::Rm {
            cluster,
            name,
            json,
        }) => commands::node_rm(&client, &cluster, &name, json).await,
        Command::Node(NodeCommand::Drain {
            cluster,
            name,
            json,
        }) => commands::node_drain(&client, &cluster, &name, true, json).await,
        Command::Node(NodeCommand::Undrain {
            cluster,
            name,
            json,
        }) => commands::node_drain(&client, &cluster, &name, false, json).await,
        Command::Node(NodeCommand::Show {
            cluster,
            name,
            json,
        }) => commands::node_show(&client, &cluster, &name, json).await,
        Command::Userdata {
            cluster,
            output,
            expires_in,
            json,
        } => commands::userdata(&client, &cluster, output.as_deref(), expires_in, json).await,
        Command::Backup { file, json } => commands::backup(&client, &file, json).await,
        Command::Serve(_) | Command::CheckCredentials { .. } | Command::Restore { .. } => {
            unreachable!("handled in main")
        }
    }
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
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            match muster_coordinator::serve::serve(settings, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "coordinator failed");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckCredentials {
            regions,
            ami,
            instance_type,
            json,
        } => {
            muster_coordinator::serve::install_crypto_provider();
            match commands::credentials(regions, ami, instance_type, json).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_INVALID)
                }
            }
        }
        Command::Restore { file, data_dir } => match commands::restore(&file, &data_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        command => {
            muster_coordinator::serve::install_crypto_provider();
            match admin(command).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ CliError::Setting(_)) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_INVALID)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
