//! The muster coordinator: it keeps node state, answers for the nodes in
//! DNS, launches nodes into EC2, and serves the HTTPS API that agents and
//! operators talk to.
//!
//! `muster-coordinator serve` runs it; the other subcommands are clients of
//! a running one. All logic lives in this library so tests can call it; the
//! binary is a thin `main.rs` (the clap tree).
//!
//! # Layout
//! From the top down; a module uses only those below it.
//! - [`serve`]: the wiring: start-up, the loops, shutdown.
//! - [`replica`]: beside other coordinators of a shared store: the rows
//!   they write, taken in.
//! - [`cli`]: the admin client, and the admin commands built on it.
//! - [`api`]: the HTTPS router, its guards and errors, the agent and admin
//!   handlers, `/metrics`, and the connection guards under them (caps per
//!   source and in total, handshake, header and idle timeouts).
//! - [`registry`]: what happens when an agent registers or heartbeats, and
//!   what the admin API reads back: admission, claims checked against EC2,
//!   the live view, liveness and the sweep, the node state machine,
//!   clusters.
//! - [`launcher`]: launching nodes into EC2 and releasing them: network,
//!   placement, security group and key pair, user data, the agent served
//!   to booting nodes.
//! - [`dns`]: the zone model, the embedded server, the provider trait, the
//!   reconcile loop and the two external providers.
//! - [`credentials`]: the CA agents pin, the admin and viewer tokens and
//!   the DNS owner id: in the data dir, or on a shared store shared
//!   through it, what is secret sealed ([`sealed`]).
//! - [`leader`]: who leads when several coordinators share a PostgreSQL
//!   store: the lease, waited for, taken, renewed, released.
//! - [`store`]: the durable state (SQLite or PostgreSQL): clusters, nodes,
//!   events, launch jobs, and the lease's rows.
//! - The ground floor: [`ec2`] (clients, tags, instance lookups), [`pki`]
//!   (CA, server certificate, admin token), [`sealed`] (AES-GCM under the
//!   store key), [`secrets`] (minting, hashing
//!   and comparing bearer secrets), [`telemetry`] (AWS call and DNS
//!   provider timings for `/metrics`), [`fdlimit`] (the open files limit,
//!   raised at start), and [`config`] (`serve` settings, the
//!   `muster-coordinator-config` crate, kept apart so the config decoder
//!   builds without the AWS SDK).

#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod credentials;
pub use muster_coordinator_config as config;
pub mod dns;
pub mod ec2;
pub mod fdlimit;
pub mod launcher;
pub mod leader;
pub mod pki;
pub mod registry;
pub mod replica;
pub mod sealed;
pub mod secrets;
pub mod serve;
pub mod store;
pub mod telemetry;
