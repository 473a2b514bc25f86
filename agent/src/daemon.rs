//! `muster-agent run`: the agent's life.
//!
//! 1. Listen on the status socket, so `muster-agent status` answers from
//!    the first moment.
//! 2. Read who the node is (retried until it answers), and the state file;
//!    a state file bound to another node id is discarded. On EC2 the node
//!    is the instance IMDS describes; a bring-your-own node (`--byon`) is
//!    named from the machine instead and IMDS is never asked
//!    ([`crate::identity::Source`] hides which, so both share every loop
//!    below).
//! 3. Register: with the stored node credential if there is one, else (or
//!    if the coordinator no longer knows it) with the join token. The
//!    credential the coordinator returns is stored at once. systemd hears
//!    READY after the first successful register.
//! 4. Heartbeat every `heartbeat_interval_ms` plus up to
//!    `heartbeat_jitter_ms`, counted from the last answer; meanwhile the
//!    addresses are polled (from IMDS, or for a bring-your-own node from
//!    the machine's own routing), and read again at once when the kernel
//!    reports a local IPv4 address added or removed ([`crate::netwatch`]).
//!    A change is sent at once in an extra heartbeat; addresses given with
//!    `--private-ipv4` are fixed and not watched. Every heartbeat also
//!    carries the node's health checks ([`crate::checks`]) and EC2's
//!    warnings ([`crate::notices`]); a check that flips, a warning that
//!    comes or goes, is sent at once too. A Spot interruption or an Auto
//!    Scaling termination (and, with `drain_on_notice`, a rebalance
//!    recommendation or maintenance) makes every heartbeat say the node is
//!    leaving, so it is `draining`. A heartbeat refused with 401 goes back
//!    to 3.
//! 5. On SIGTERM or SIGINT: tell systemd STOPPING; if registered, say the
//!    node is leaving in one last heartbeat, so the coordinator takes it
//!    out of its cluster's round robin, then wait `drain_wait` (the
//!    record's TTL) so resolvers stop sending traffic before the node's
//!    services go. A second signal ends the wait. Then remove the socket
//!    and exit 0.
//!
//! Every retry is bounded exponential backoff with full jitter
//! ([`Backoff::coordinator`]: each wait drawn between zero and a ceiling of
//! 0.5 s, 1 s, 2 s, 4 s, 8 s, 16 s, 32 s, then 60 s for ever); the agent
//! never gives up on the coordinator. A failed heartbeat is tried again no
//! later than the heartbeat interval, unless the coordinator asked for a
//! longer pause (`Retry-After`): the coordinator judges silence by that
//! interval, so a coordinator that was away (restarted, or replaced by a
//! standby) hears every agent within one interval of coming back and
//! marks none unreachable for its own absence; and the fleet's retries
//! never come faster than its heartbeats. While it gets no answer (or only
//! 5xx) the status shows since when it has been cut off.
//!
//! Under systemd with `WatchdogSec=` (`WATCHDOG_USEC` and `WATCHDOG_PID`
//! set for this process), the agent sends `WATCHDOG=1` every half interval.
//! The pings come from the main loop itself, whenever it waits (for the
//! next heartbeat, a retry, or new addresses), so a loop stuck in a step
//! stops pinging and systemd restarts the agent. The slowest step is a
//! coordinator request (at most 15 s), so `WatchdogSec=` should be well above
//! that.
//!
//! `daemon/addresses.rs` follows the addresses (step 4's poll and events);
//! `daemon/heartbeat.rs` is the heartbeat loop and the last heartbeat on
//! the way out (steps 4 and 5); `daemon/watchdog.rs` pings systemd's
//! watchdog.

mod addresses;
mod heartbeat;
mod watchdog;

use std::future::Future;
use std::sync::Arc;

use muster_proto::token::TokenKind;
use muster_proto::{Ec2Notice, ErrorCode, HeartbeatRequest, RegisterResponse};
use reqwest::StatusCode;
use sd_notify::NotifyState;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::time::sleep;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::checks;
use crate::coordinator::{CoordinatorClient, CoordinatorError};
use crate::facts::FactsCollector;
use crate::identity::{Identity, Source};
use crate::imds::{Addresses, ImdsClient, ImdsError};
use crate::netwatch::AddressWatch;
use crate::notices::watch_notices;
use crate::settings::{Secret, Settings};
use crate::state::{self, StateError, StoredState};
use crate::status::{self, Live, StatusError};
use crate::{error_chain, AbortOnDrop};
use addresses::{forward_address_events, watch_addresses};
use watchdog::Watchdog;

/// Why the agent stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The status socket could not be set up.
    #[error("cannot serve status")]
    Status(#[from] StatusError),
    /// The IMDS client could not be built.
    #[error("cannot set up IMDS")]
    Imds(#[source] ImdsError),
    /// The coordinator client could not be built.
    #[error("cannot set up the coordinator client")]
    Coordinator(#[source] CoordinatorError),
    /// The stale state file could not be removed.
    #[error("cannot discard the state of another node")]
    DiscardState(#[source] StateError),
    /// The state file is open to others.
    #[error("refusing to start")]
    StateExposed(#[source] StateError),
    /// Nothing left to register with.
    #[error(
        "no join token is configured and no usable node credential is stored in {state_dir}; \
         set --join-token"
    )]
    NoSecret {
        /// The state dir.
        state_dir: String,
    },
}

/// Starts listening for SIGTERM and SIGINT at once (so that one arriving
/// during start-up is not lost) and returns a future that completes on
/// either. Must be called within the tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received; stopping"),
            _ = int.recv() => info!("SIGINT received; stopping"),
        }
    })
}

/// Runs the agent until `shutdown` completes (then `Ok`, after the node
/// has left: step 5) or setup fails.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    crate::install_crypto_provider();
    let watchdog = Watchdog::from_env();
    let live = Live::new(&settings.cluster, &settings.coordinator_url);
    let (listener, socket_file) = status::bind(&settings.socket)?;
    info!(socket = %settings.socket.display(), "status socket listening");
    let server = AbortOnDrop(tokio::spawn(status::serve(
        listener,
        live.clone(),
        settings.dns_server,
    )));

    let outcome = match Agent::new(&settings, live, watchdog) {
        Ok(mut agent) => {
            let stopped = tokio::select! {
                result = agent.run() => Err(result),
                () = shutdown => Ok(()),
            };
            notify(&[NotifyState::Stopping]);
            match stopped {
                Ok(()) => {
                    agent.leave().await;
                    Ok(())
                }
                Err(result) => result,
            }
        }
        Err(e) => {
            notify(&[NotifyState::Stopping]);
            Err(e)
        }
    };

    drop(server);
    drop(socket_file);
    if outcome.is_ok() {
        info!("stopped");
    }
    outcome
}

/// Tells systemd, if the agent runs under it; otherwise does nothing.
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "cannot notify systemd");
    }
}

/// The secret a register presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presented {
    Credential,
    JoinToken,
}

#[derive(Debug)]
struct Agent<'a> {
    settings: &'a Settings,
    live: Live,
    /// Where the identity and the addresses come from.
    source: Arc<Source>,
    api: CoordinatorClient,
    facts: FactsCollector,
    /// The node credential in use, if any.
    credential: Option<Secret>,
    /// Whether the coordinator refused the stored credential.
    credential_refused: bool,
    /// Whether systemd has heard READY.
    ready: bool,
    /// The systemd watchdog, pinged while the loop waits.
    watchdog: Watchdog,
    /// A state that could not be written yet.
    unsaved: Option<StoredState>,
    /// The node's health checks, run while the agent runs.
    checks: checks::Running,
    /// EC2's warnings, as last read.
    notices: watch::Receiver<Vec<Ec2Notice>>,
    /// Reads EC2's warnings; stops when dropped.
    _notice_watch: AbortOnDrop,
    /// The latest heartbeat built (or, after a register, what the next one
    /// would say): what the last heartbeat on shutdown repeats.
    last_request: Option<HeartbeatRequest>,
}

impl<'a> Agent<'a> {
    fn new(settings: &'a Settings, live: Live, watchdog: Watchdog) -> Result<Self, RunError> {
        let source = Arc::new(match &settings.byon {
            Some(node) => Source::Byon(node.clone()),
            None => Source::Imds(ImdsClient::new(&settings.imds_endpoint).map_err(RunError::Imds)?),
        });
        let ca = settings
            .ca
            .as_ref()
            .map(|(path, pem)| (pem.as_slice(), path.display().to_string()));
        let api = CoordinatorClient::new(
            &settings.coordinator_url,
            ca.as_ref().map(|(pem, path)| (*pem, path.as_str())),
        )
        .map_err(RunError::Coordinator)?;
        let checks = checks::start(settings.checks.clone());
        let (notices_tx, notices) = watch::channel(Vec::new());
        let notice_watch = AbortOnDrop(tokio::spawn(watch_notices(source.clone(), notices_tx)));
        Ok(Agent {
            settings,
            live,
            source,
            api,
            facts: FactsCollector::new(),
            credential: None,
            credential_refused: false,
            ready: false,
            watchdog,
            unsaved: None,
            checks,
            notices,
            _notice_watch: notice_watch,
            last_request: None,
        })
    }

    async fn run(&mut self) -> Result<(), RunError> {
        let mut identity = self.read_identity().await;
        match &identity.byon {
            None => info!(
                instance_id = %identity.node_id,
                availability_zone = %identity.availability_zone,
                region = %identity.region,
                private_ipv4 = %show(identity.addresses.private_ipv4),
                public_ipv4 = %show(identity.addresses.public_ipv4),
                ipv6 = %show(identity.addresses.ipv6),
                "instance identified"
            ),
            Some(byon) => info!(
                node_id = %identity.node_id,
                hostname = %byon.hostname,
                private_ipv4 = %show(identity.addresses.private_ipv4),
                public_ipv4 = %show(identity.addresses.public_ipv4),
                fixed = self.source.fixed(),
                "bring-your-own node identified"
            ),
        }
        self.live.set_identity(
            &identity.node_id,
            identity.byon.is_some(),
            identity.addresses,
        );
        self.load_state(&identity)?;

        let (tx, mut addresses) = watch::channel(identity.addresses);
        let (_events, _watcher) = if self.source.fixed() {
            debug!("the addresses are given; not watching them");
            (None, None)
        } else {
            self.watch(tx)
        };
        loop {
            let registered = self.register(&mut identity, &mut addresses).await?;
            self.heartbeat(&identity, registered, &mut addresses).await;
        }
    }

    /// Starts following the addresses: a poll, and local address events
    /// from the kernel to read them again at once. Both stop when dropped.
    fn watch(&self, tx: watch::Sender<Addresses>) -> (Option<AbortOnDrop>, Option<AbortOnDrop>) {
        let what = self.source.what();
        // One pending nudge stands for any number of address events.
        let (nudge, nudges) = mpsc::channel(1);
        let events = match AddressWatch::open() {
            Ok(events) => {
                debug!("listening for local address events");
                Some(AbortOnDrop(tokio::spawn(forward_address_events(
                    events, nudge, what,
                ))))
            }
            Err(e) => {
                info!(error = %e, "cannot listen for local address events; relying on the poll of {what}");
                None
            }
        };
        let watcher = AbortOnDrop(tokio::spawn(watch_addresses(
            self.source.clone(),
            self.settings.imds_poll_interval,
            tx,
            self.live.clone(),
            nudges,
        )));
        (events, Some(watcher))
    }

    /// Reads who the node is, retrying until it can be told.
    async fn read_identity(&mut self) -> Identity {
        let mut backoff = Backoff::coordinator();
        loop {
            match self.source.identity().await {
                Ok(identity) => return identity,
                Err(e) => {
                    let error = error_chain(&e);
                    let wait = backoff.next_delay();
                    warn!(%error, ?wait, "cannot tell who this node is; retrying");
                    self.live.failed(error);
                    self.watchdog.idle(sleep(wait)).await;
                }
            }
        }
    }

    /// Takes the node credential from the state file, unless the file is
    /// bound to another node id (another instance, or a bring-your-own
    /// node's state copied from another machine) or names another
    /// coordinator.
    fn load_state(&mut self, identity: &Identity) -> Result<(), RunError> {
        let dir = &self.settings.state_dir;
        let stored = match state::load(dir) {
            Ok(stored) => stored,
            // Another node's file (baked into an image, where modes are
            // often lost) holds nothing of this node's to protect.
            Err(state::StateError::Exposed { .. })
                if state::owner(dir).is_some_and(|owner| owner != identity.node_id) =>
            {
                warn!(
                    current = %identity.node_id,
                    "the state file belongs to another node and others may read it (an image baked with state?); discarding it"
                );
                state::discard(dir).map_err(RunError::DiscardState)?;
                None
            }
            Err(e @ state::StateError::Exposed { .. }) => return Err(RunError::StateExposed(e)),
            Err(e) => {
                warn!(error = %error_chain(&e), "ignoring the state file; joining afresh");
                None
            }
        };
        if let Some(stored) = stored {
            if stored.instance_id != identity.node_id {
                warn!(
                    stored = %stored.instance_id,
                    current = %identity.node_id,
                    "the state file belongs to another node (an image baked with state, or a state dir copied from another machine?); discarding it"
                );
                state::discard(dir).map_err(RunError::DiscardState)?;
            } else if stored.coordinator_url != self.settings.coordinator_url {
                // The credential is never sent to a coordinator that did not
                // issue it.
                warn!(
                    stored = %stored.coordinator_url,
                    configured = %self.settings.coordinator_url,
                    "the stored credential is from another coordinator; not using it"
                );
            } else if TokenKind::of(&stored.credential) != Some(TokenKind::Node) {
                warn!("the stored credential is not a node credential; not using it");
            } else {
                info!(node = %stored.node, "node credential loaded");
                self.live.remember(&stored);
                self.credential = Some(Secret::new(stored.credential));
            }
        }
        if self.credential.is_none() && self.settings.join_token.is_none() {
            return Err(RunError::NoSecret {
                state_dir: dir.display().to_string(),
            });
        }
        Ok(())
    }

    /// The secret to present on register, and which it is.
    fn secret(&self) -> Option<(Secret, Presented)> {
        match (&self.credential, &self.settings.join_token) {
            (Some(credential), _) if !self.credential_refused => {
                Some((credential.clone(), Presented::Credential))
            }
            (_, Some(token)) => Some((token.clone(), Presented::JoinToken)),
            // Refused, and no join token: keep trying the credential.
            (Some(credential), None) => Some((credential.clone(), Presented::Credential)),
            (None, None) => None,
        }
    }

    /// Registers, retrying until the coordinator accepts.
    async fn register(
        &mut self,
        identity: &mut Identity,
        addresses: &mut watch::Receiver<Addresses>,
    ) -> Result<RegisterResponse, RunError> {
        let mut backoff = Backoff::coordinator();
        // A pause the coordinator asked for (`Retry-After`).
        let mut asked = None;
        loop {
            let Some((secret, presented)) = self.secret() else {
                return Err(RunError::NoSecret {
                    state_dir: self.settings.state_dir.display().to_string(),
                });
            };
            let current = *addresses.borrow_and_update();
            let request = identity.register_request(&self.settings.cluster, current);
            self.live.registering();
            let using = match presented {
                Presented::Credential => "node credential",
                Presented::JoinToken => "join token",
            };
            debug!(using, "registering");
            match self.api.register(secret.expose(), &request).await {
                Ok(response) if TokenKind::of(&response.credential) == Some(TokenKind::Node) => {
                    self.accept(identity, &response);
                    return Ok(response);
                }
                Ok(_) => {
                    let error =
                        "the coordinator answered the register without a valid node credential";
                    error!("{error}");
                    self.live.refused(error.to_owned());
                }
                Err(e)
                    if e.status() == Some(StatusCode::UNAUTHORIZED)
                        && presented == Presented::Credential
                        && self.settings.join_token.is_some() =>
                {
                    warn!(
                        code = e.code().map_or("", ErrorCode::as_str),
                        "the coordinator refused the stored node credential; registering with the join token"
                    );
                    self.credential_refused = true;
                    continue;
                }
                Err(e) => {
                    self.register_failed(&e, using, identity).await;
                    asked = e.retry_after();
                }
            }
            let wait = backoff.next_delay().max(asked.take().unwrap_or_default());
            debug!(?wait, "registering again after a pause");
            self.watchdog
                .idle(async {
                    tokio::select! {
                        () = sleep(wait) => {}
                        // New addresses may be what the coordinator was
                        // waiting for.
                        Ok(()) = addresses.changed() => {}
                    }
                })
                .await;
        }
    }

    /// Logs and records a register that failed; one refused for its
    /// identity document reads the document again for the next try.
    async fn register_failed(
        &mut self,
        e: &CoordinatorError,
        using: &str,
        identity: &mut Identity,
    ) {
        match e {
            CoordinatorError::Refused {
                status,
                code,
                message,
                ..
            } => {
                error!(
                    using,
                    status = status.as_u16(),
                    code = code.as_str(),
                    message,
                    "register refused"
                );
            }
            _ => {
                warn!(error = %error_chain(e), "register failed; the coordinator is unreachable")
            }
        }
        self.exchange_failed(e);
        if e.code() == Some(&ErrorCode::IdentityUnproven) {
            // IMDS may serve the signed document by the next try.
            match self.source.signed_identity().await {
                Ok(signed) => identity.signed = signed,
                Err(e) => {
                    warn!(error = %error_chain(&e), "cannot read the identity document")
                }
            }
        }
    }

    /// Records a failed exchange with the coordinator in the status: as
    /// being cut off from it if it did not answer (or answered 5xx), as a
    /// refusal otherwise.
    fn exchange_failed(&self, e: &CoordinatorError) {
        if e.is_outage() {
            self.live.unreachable(error_chain(e));
        } else {
            self.live.refused(error_chain(e));
        }
    }

    /// Keeps what a successful register returned: the credential goes to
    /// disk at once.
    fn accept(&mut self, identity: &Identity, response: &RegisterResponse) {
        let node = &response.node;
        info!(
            node = %node.name,
            cluster = %node.cluster,
            dns_name = %node.dns_name,
            state = %node.state,
            "registered"
        );
        self.credential = Some(Secret::new(response.credential.clone()));
        self.credential_refused = false;
        self.save(&StoredState {
            instance_id: identity.node_id.clone(),
            cluster: node.cluster.clone(),
            node: node.name.clone(),
            dns_name: node.dns_name.clone(),
            internal_dns_name: node.internal_dns_name.clone(),
            credential: response.credential.clone(),
            coordinator_url: self.settings.coordinator_url.clone(),
        });
        self.live.registered(node);
        if self.last_request.is_none() {
            self.last_request = Some(HeartbeatRequest {
                instance_id: identity.node_id.clone(),
                private_ipv4: identity.addresses.private_ipv4,
                public_ipv4: identity.addresses.public_ipv4,
                ipv6: identity.addresses.ipv6,
                facts: Default::default(),
                checks: Vec::new(),
                notices: Vec::new(),
                leaving: None,
                agent_version: Some(crate::AGENT_VERSION.to_owned()),
            });
        }
        if !self.ready {
            notify(&[NotifyState::Ready]);
            self.ready = true;
        }
    }

    /// Writes the state file; a failure is reported in the status and
    /// retried at the next heartbeat by [`Agent::retry_save`].
    fn save(&mut self, stored: &StoredState) {
        match state::save(&self.settings.state_dir, stored) {
            Ok(()) => {
                self.live.set_unsaved(None);
                self.unsaved = None;
            }
            Err(e) => {
                let error = error_chain(&e);
                error!(%error, "cannot store the node credential; it is kept in memory and written again later");
                self.live.set_unsaved(Some(error));
                self.unsaved = Some(stored.clone());
            }
        }
    }

    /// Writes a state that could not be written before, if any.
    fn retry_save(&mut self) {
        if let Some(stored) = self.unsaved.take() {
            self.save(&stored);
        }
    }
}

/// An optional address for a log line: the address, or `none`.
fn show(addr: Option<impl std::fmt::Display>) -> String {
    addr.map_or_else(|| "none".to_owned(), |a| a.to_string())
}
