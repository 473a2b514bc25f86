//! `muster-agent run`: the agent's life.
//!
//! 1. Listen on the status socket, so `muster-agent status` answers from
//!    the first moment.
//! 2. Read who the instance is from IMDS (retried until it answers), and
//!    the state file; a state file from another instance is discarded.
//! 3. Register: with the stored node credential if there is one, else (or
//!    if the coordinator no longer knows it) with the join token. The
//!    credential the coordinator returns is stored at once. systemd hears
//!    READY after the first successful register.
//! 4. Heartbeat every `heartbeat_interval_ms` plus up to
//!    `heartbeat_jitter_ms`, counted from the last answer; meanwhile IMDS is
//!    polled for the addresses, and a change is sent at once in an extra
//!    heartbeat. A heartbeat refused with 401 goes back to 3.
//! 5. On SIGTERM or SIGINT: tell systemd STOPPING, remove the socket, exit 0.
//!
//! Every retry is bounded exponential backoff with jitter
//! ([`Backoff::coordinator`]: 0.5 s, 1 s, 2 s, … capped at 30 s); the agent
//! never gives up on the coordinator.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use muster_proto::token::TokenKind;
use muster_proto::{HeartbeatRequest, RegisterRequest, RegisterResponse, PROTOCOL_VERSION};
use reqwest::StatusCode;
use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{debug, error, info, warn};

use crate::backoff::{self, Backoff};
use crate::coordinator::{CoordinatorClient, CoordinatorError};
use crate::error_chain;
use crate::facts::FactsCollector;
use crate::imds::{Addresses, Identity, ImdsClient, ImdsError};
use crate::settings::{Secret, Settings};
use crate::state::{self, StateError, StoredState};
use crate::status::{self, Live, StatusError};

/// Heartbeat intervals from the coordinator are kept within these bounds, so
/// a zero cannot make the agent spin and a typo cannot silence it.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3600);

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
    #[error("cannot discard the state of another instance")]
    DiscardState(#[source] StateError),
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

/// Runs the agent until `shutdown` completes (then `Ok`) or setup fails.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    crate::install_crypto_provider();
    let live = Live::new(&settings.cluster, &settings.coordinator_url);
    let (listener, socket_file) = status::bind(&settings.socket)?;
    info!(socket = %settings.socket.display(), "status socket listening");
    let server = AbortOnDrop(tokio::spawn(status::serve(
        listener,
        live.clone(),
        settings.dns_server,
    )));

    let outcome = match Agent::new(&settings, live) {
        Ok(agent) => tokio::select! {
            result = agent.run() => result,
            () = shutdown => Ok(()),
        },
        Err(e) => Err(e),
    };

    notify(&[NotifyState::Stopping]);
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
    imds: Arc<ImdsClient>,
    api: CoordinatorClient,
    facts: FactsCollector,
    /// The node credential in use, if any.
    credential: Option<Secret>,
    /// Whether the coordinator refused the stored credential.
    credential_refused: bool,
    /// Whether systemd has heard READY.
    ready: bool,
    /// A state that could not be written yet.
    unsaved: Option<StoredState>,
}

/// Aborts a background task when dropped, so that it ends with the future
/// that started it, even when that future is cancelled by a shutdown.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<'a> Agent<'a> {
    fn new(settings: &'a Settings, live: Live) -> Result<Self, RunError> {
        let imds = Arc::new(ImdsClient::new(&settings.imds_endpoint).map_err(RunError::Imds)?);
        let api = CoordinatorClient::new(
            &settings.coordinator_url,
            &settings.ca_pem,
            &settings.ca_file.display().to_string(),
        )
        .map_err(RunError::Coordinator)?;
        Ok(Agent {
            settings,
            live,
            imds,
            api,
            facts: FactsCollector::new(),
            credential: None,
            credential_refused: false,
            ready: false,
            unsaved: None,
        })
    }

    async fn run(mut self) -> Result<(), RunError> {
        let identity = self.read_identity().await;
        info!(
            instance_id = %identity.instance_id,
            availability_zone = %identity.availability_zone,
            region = %identity.region,
            private_ipv4 = %identity.addresses.private_ipv4,
            public_ipv4 = %show(identity.addresses.public_ipv4),
            "instance identified"
        );
        self.live
            .set_identity(&identity.instance_id, identity.addresses);
        self.load_state(&identity)?;

        let (tx, mut addresses) = watch::channel(identity.addresses);
        let _watcher = AbortOnDrop(tokio::spawn(watch_addresses(
            self.imds.clone(),
            self.settings.imds_poll_interval,
            tx,
            self.live.clone(),
        )));
        loop {
            let registered = self.register(&identity, &mut addresses).await?;
            self.heartbeat(&identity, registered, &mut addresses).await;
        }
    }

    /// Reads the identity from IMDS, retrying until it answers.
    async fn read_identity(&self) -> Identity {
        let mut backoff = Backoff::coordinator();
        loop {
            match self.imds.identity().await {
                Ok(identity) => return identity,
                Err(e) => {
                    let error = error_chain(&e);
                    let wait = backoff.next_delay();
                    warn!(%error, ?wait, "cannot read the instance identity from IMDS; retrying");
                    self.live.failed(error);
                    sleep(wait).await;
                }
            }
        }
    }

    /// Takes the node credential from the state file, unless the file is
    /// from another instance or names another coordinator.
    fn load_state(&mut self, identity: &Identity) -> Result<(), RunError> {
        let dir = &self.settings.state_dir;
        let stored = match state::load(dir) {
            Ok(stored) => stored,
            Err(e) => {
                warn!(error = %error_chain(&e), "ignoring the state file; joining afresh");
                None
            }
        };
        if let Some(stored) = stored {
            if stored.instance_id != identity.instance_id {
                warn!(
                    stored = %stored.instance_id,
                    imds = %identity.instance_id,
                    "the state file belongs to another instance (an image baked with state?); discarding it"
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
        identity: &Identity,
        addresses: &mut watch::Receiver<Addresses>,
    ) -> Result<RegisterResponse, RunError> {
        let mut backoff = Backoff::coordinator();
        loop {
            let Some((secret, presented)) = self.secret() else {
                return Err(RunError::NoSecret {
                    state_dir: self.settings.state_dir.display().to_string(),
                });
            };
            let current = *addresses.borrow_and_update();
            let request = RegisterRequest {
                protocol: PROTOCOL_VERSION,
                cluster: self.settings.cluster.clone(),
                instance_id: identity.instance_id.clone(),
                availability_zone: identity.availability_zone.clone(),
                region: identity.region.clone(),
                private_ipv4: current.private_ipv4,
                public_ipv4: current.public_ipv4,
                agent_version: crate::AGENT_VERSION.to_owned(),
            };
            self.live.registering();
            let using = match presented {
                Presented::Credential => "node credential",
                Presented::JoinToken => "join token",
            };
            debug!(using, "registering");
            let error = match self.api.register(secret.expose(), &request).await {
                Ok(response) if TokenKind::of(&response.credential) == Some(TokenKind::Node) => {
                    self.accept(identity, &response);
                    return Ok(response);
                }
                Ok(_) => {
                    let error =
                        "the coordinator answered the register without a valid node credential";
                    error!("{error}");
                    error.to_owned()
                }
                Err(e)
                    if e.status() == Some(StatusCode::UNAUTHORIZED)
                        && presented == Presented::Credential
                        && self.settings.join_token.is_some() =>
                {
                    warn!(
                        code = e.code().unwrap_or_default(),
                        "the coordinator refused the stored node credential; registering with the join token"
                    );
                    self.credential_refused = true;
                    continue;
                }
                Err(e) => {
                    let text = error_chain(&e);
                    match &e {
                        CoordinatorError::Refused {
                            status,
                            code,
                            message,
                            ..
                        } => {
                            error!(
                                using,
                                status = status.as_u16(),
                                code,
                                message,
                                "register refused"
                            );
                        }
                        _ => {
                            warn!(error = %text, "register failed; the coordinator is unreachable")
                        }
                    }
                    text
                }
            };
            self.live.failed(error);
            let wait = backoff.next_delay();
            debug!(?wait, "registering again after a pause");
            tokio::select! {
                () = sleep(wait) => {}
                // New addresses may be what the coordinator was waiting for.
                Ok(()) = addresses.changed() => {}
            }
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
            instance_id: identity.instance_id.clone(),
            cluster: node.cluster.clone(),
            node: node.name.clone(),
            dns_name: node.dns_name.clone(),
            internal_dns_name: node.internal_dns_name.clone(),
            credential: response.credential.clone(),
            coordinator_url: self.settings.coordinator_url.clone(),
        });
        self.live.registered(node);
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

    /// Heartbeats until the coordinator no longer knows the credential.
    async fn heartbeat(
        &mut self,
        identity: &Identity,
        registered: RegisterResponse,
        addresses: &mut watch::Receiver<Addresses>,
    ) {
        let Some(credential) = self.credential.clone() else {
            return;
        };
        let mut interval = heartbeat_interval(
            registered.heartbeat_interval_ms,
            registered.heartbeat_jitter_ms,
        );
        let mut next = Instant::now() + backoff::with_jitter(interval.0, interval.1);
        let mut backoff = Backoff::coordinator();
        // What the coordinator last accepted; a change is sent at once.
        let mut sent = *addresses.borrow_and_update();
        loop {
            tokio::select! {
                () = sleep_until(next) => {}
                // (If the watcher is gone, only the timer is left.)
                Ok(()) = addresses.changed() => {
                    let now = *addresses.borrow_and_update();
                    if now == sent {
                        continue;
                    }
                    info!(
                        private_ipv4 = %now.private_ipv4,
                        public_ipv4 = %show(now.public_ipv4),
                        "addresses changed; telling the coordinator now"
                    );
                    backoff.reset();
                }
            }

            let current = *addresses.borrow_and_update();
            let request = HeartbeatRequest {
                instance_id: identity.instance_id.clone(),
                private_ipv4: current.private_ipv4,
                public_ipv4: current.public_ipv4,
                facts: self.facts.collect().await,
            };
            match self.api.heartbeat(credential.expose(), &request).await {
                Ok(response) => {
                    if current != sent {
                        info!(
                            private_ipv4 = %current.private_ipv4,
                            public_ipv4 = %show(current.public_ipv4),
                            "the coordinator accepted the new addresses"
                        );
                    }
                    debug!(state = %response.state, "heartbeat answered");
                    sent = current;
                    self.live.contact(response.state);
                    self.retry_save();
                    backoff.reset();
                    interval = heartbeat_interval(
                        response.heartbeat_interval_ms,
                        response.heartbeat_jitter_ms,
                    );
                    next = Instant::now() + backoff::with_jitter(interval.0, interval.1);
                }
                Err(e) if e.status() == Some(StatusCode::UNAUTHORIZED) => {
                    warn!(
                        code = e.code().unwrap_or_default(),
                        "the coordinator no longer accepts the node credential; registering again"
                    );
                    self.live.failed(error_chain(&e));
                    self.credential_refused = true;
                    return;
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    match &e {
                        CoordinatorError::Refused {
                            status,
                            code,
                            message,
                            ..
                        } if *status == StatusCode::CONFLICT => {
                            warn!(
                                code,
                                message,
                                ?wait,
                                "the coordinator does not agree with the addresses yet; retrying"
                            );
                        }
                        CoordinatorError::Refused {
                            status,
                            code,
                            message,
                            ..
                        } => {
                            error!(
                                status = status.as_u16(),
                                code,
                                message,
                                ?wait,
                                "heartbeat refused"
                            );
                        }
                        _ => warn!(
                            error = %error_chain(&e),
                            ?wait,
                            "heartbeat failed; the coordinator is unreachable"
                        ),
                    }
                    self.live.failed(error_chain(&e));
                    next = Instant::now() + wait;
                }
            }
        }
    }
}

/// The heartbeat interval and jitter the coordinator asked for, within
/// bounds: the interval between 1 s and 1 h, the jitter at most the interval.
fn heartbeat_interval(interval_ms: u64, jitter_ms: u64) -> (Duration, Duration) {
    let interval =
        Duration::from_millis(interval_ms).clamp(MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL);
    let jitter = Duration::from_millis(jitter_ms).min(interval);
    (interval, jitter)
}

/// An optional address for a log line: the address, or `none`.
fn show(addr: Option<Ipv4Addr>) -> String {
    addr.map_or_else(|| "none".to_owned(), |a| a.to_string())
}

/// Polls IMDS for the addresses every `every` and publishes changes.
///
/// A failed poll keeps the last known addresses; it is logged once when it
/// starts failing and once when it recovers, not every tick.
async fn watch_addresses(
    imds: Arc<ImdsClient>,
    every: Duration,
    tx: watch::Sender<Addresses>,
    live: Live,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut failing = false;
    loop {
        ticker.tick().await;
        match imds.addresses().await {
            Ok(addresses) => {
                if failing {
                    info!("IMDS answers again");
                    failing = false;
                }
                if *tx.borrow() != addresses {
                    debug!(
                        private_ipv4 = %addresses.private_ipv4,
                        public_ipv4 = %show(addresses.public_ipv4),
                        "IMDS reports new addresses"
                    );
                    live.set_addresses(addresses);
                    tx.send_replace(addresses);
                }
            }
            Err(e) => {
                if !failing {
                    warn!(error = %error_chain(&e), "cannot read the addresses from IMDS; keeping the last known");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Intervals from the coordinator are kept within bounds.
    #[test]
    fn heartbeat_interval_is_bounded() {
        assert_eq!(
            heartbeat_interval(0, 5_000),
            (MIN_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL)
        );
        assert_eq!(
            heartbeat_interval(10_000, 2_000),
            (Duration::from_secs(10), Duration::from_secs(2))
        );
        assert_eq!(heartbeat_interval(u64::MAX, 0).0, MAX_HEARTBEAT_INTERVAL);
    }
}
