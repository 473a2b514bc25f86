//! EC2's warnings about the instance, read from IMDS while the agent runs.
//!
//! Four items, each 404 while there is nothing to say:
//! - `meta-data/spot/instance-action`: a Spot interruption, about two
//!   minutes ahead (`{"action": "terminate", "time": "…"}`);
//! - `meta-data/events/recommendations/rebalance`: a Spot instance at higher
//!   risk of interruption (`{"noticeTime": "…"}`);
//! - `meta-data/autoscaling/target-lifecycle-state`: the Auto Scaling
//!   lifecycle state the instance is moving to (`InService`, `Terminated`,
//!   …); only `Terminated` is a warning;
//! - `meta-data/events/maintenance/scheduled`: scheduled events, a JSON list
//!   (`[]` when there are none); those not `completed` or `canceled` are
//!   warnings.
//!
//! The imminent two (a Spot interruption, an Auto Scaling termination) are
//! read every [`POLL_INTERVAL`] (the AWS Node Termination Handler's pace);
//! the advance two (a rebalance recommendation, scheduled maintenance),
//! which EC2 gives minutes to days ahead, every [`ADVANCE_POLL_INTERVAL`]
//! with them, their last answers standing between. A read that fails
//! changes nothing: the warnings last read stand until IMDS answers again.
//! With the address poll ([`crate::daemon`]), an idle agent sends IMDS
//! 2.4 requests a second at the defaults, where it sent 5.
//!
//! What IMDS says is untrusted text: it is cleaned and cut to 512 bytes
//! ([`muster_proto::condition::fit`]) and kept as detail, and a time is
//! taken only from the field EC2 documents. The daemon decides which
//! warnings drain the node ([`leaving`]).

use std::sync::Arc;
use std::time::Duration;

use muster_proto::condition::{fit, MAX_NOTICES};
use muster_proto::{Ec2Notice, NoticeKind};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::identity::Source;
use crate::imds::{ImdsClient, ImdsError};

/// How often the imminent warnings are read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How often the advance warnings are read.
pub const ADVANCE_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// The IMDS items, under `/latest/`.
pub mod paths {
    /// A Spot interruption notice.
    pub const SPOT_INSTANCE_ACTION: &str = "meta-data/spot/instance-action";
    /// A rebalance recommendation.
    pub const REBALANCE: &str = "meta-data/events/recommendations/rebalance";
    /// The Auto Scaling target lifecycle state.
    pub const TARGET_LIFECYCLE_STATE: &str = "meta-data/autoscaling/target-lifecycle-state";
    /// Scheduled maintenance events.
    pub const MAINTENANCE: &str = "meta-data/events/maintenance/scheduled";
}

/// What IMDS last answered for the advance items (`None`: 404).
#[derive(Debug, Default)]
pub struct Advance {
    rebalance: Option<String>,
    maintenance: Option<String>,
}

/// Reads the imminent items, and the advance ones too when `advance` is
/// `None` (read them into it) rather than their last answers; returns the
/// warnings they hold.
pub async fn read(
    imds: &ImdsClient,
    advance: &mut Option<Advance>,
) -> Result<Vec<Ec2Notice>, ImdsError> {
    let imminent = async {
        tokio::try_join!(
            imds.get(paths::SPOT_INSTANCE_ACTION),
            imds.get(paths::TARGET_LIFECYCLE_STATE),
        )
    };
    let (spot, lifecycle) = match advance {
        Some(_) => imminent.await?,
        None => {
            let (imminent, rebalance, maintenance) = tokio::try_join!(
                imminent,
                imds.get(paths::REBALANCE),
                imds.get(paths::MAINTENANCE),
            )?;
            *advance = Some(Advance {
                rebalance,
                maintenance,
            });
            imminent
        }
    };
    let advance = advance.as_ref().expect("read above if it was not");
    Ok(parse(
        spot.as_deref(),
        advance.rebalance.as_deref(),
        lifecycle.as_deref(),
        advance.maintenance.as_deref(),
    ))
}

/// The warnings in what IMDS answered for each item (`None`: 404).
pub fn parse(
    spot: Option<&str>,
    rebalance: Option<&str>,
    lifecycle: Option<&str>,
    maintenance: Option<&str>,
) -> Vec<Ec2Notice> {
    let mut notices = Vec::new();
    if let Some(text) = spot.filter(|t| !t.trim().is_empty()) {
        notices.push(notice(NoticeKind::SpotInterruption, text, "time"));
    }
    if let Some(text) = rebalance.filter(|t| !t.trim().is_empty()) {
        notices.push(notice(
            NoticeKind::RebalanceRecommendation,
            text,
            "noticeTime",
        ));
    }
    if let Some(state) = lifecycle.map(str::trim) {
        if state == "Terminated" {
            notices.push(Ec2Notice {
                kind: NoticeKind::AutoscalingTermination,
                time: None,
                detail: format!("target lifecycle state {state}"),
            });
        }
    }
    if let Some(text) = maintenance {
        notices.extend(maintenance_events(text));
    }
    notices.truncate(MAX_NOTICES);
    notices
}

/// A warning whose IMDS item is a JSON object with its time in `field`.
fn notice(kind: NoticeKind, text: &str, field: &str) -> Ec2Notice {
    let time = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get(field).and_then(|t| t.as_str()).map(fit));
    Ec2Notice {
        kind,
        time,
        detail: fit(text),
    }
}

/// Scheduled events that are still to come or under way. A list that is
/// not JSON is one warning with the text as detail: IMDS said something.
fn maintenance_events(text: &str) -> Vec<Ec2Notice> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return vec![Ec2Notice {
            kind: NoticeKind::ScheduledMaintenance,
            time: None,
            detail: fit(text),
        }];
    };
    let field = |event: &serde_json::Value, name: &str| {
        event
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    value
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|event| !matches!(field(event, "State").as_str(), "completed" | "canceled"))
        .map(|event| {
            let not_before = field(event, "NotBefore");
            Ec2Notice {
                kind: NoticeKind::ScheduledMaintenance,
                time: (!not_before.is_empty()).then(|| fit(&not_before)),
                detail: fit(
                    format!("{}: {}", field(event, "Code"), field(event, "Description")).trim(),
                ),
            }
        })
        .collect()
}

/// Why the node should leave on these warnings, if it should: a Spot
/// interruption or an Auto Scaling termination always; a rebalance
/// recommendation or maintenance only with `drain_on_notice`.
pub fn leaving(notices: &[Ec2Notice], drain_on_notice: bool) -> Option<String> {
    notices
        .iter()
        .find(|n| n.kind.is_final())
        .or_else(|| notices.first().filter(|_| drain_on_notice))
        .map(|n| {
            let at = n
                .time
                .as_deref()
                .map(|t| format!(" for {t}"))
                .unwrap_or_default();
            format!(
                "EC2 gave a {} notice{at}",
                n.kind.as_str().replace('_', " ")
            )
        })
}

/// Reads the warnings every [`POLL_INTERVAL`] (the advance ones every
/// [`ADVANCE_POLL_INTERVAL`]) and publishes them when they change, until
/// `tx` has no receiver. A bring-your-own node has none to read: the task
/// ends at once, leaving the channel empty.
pub async fn watch_notices(source: Arc<Source>, tx: watch::Sender<Vec<Ec2Notice>>) {
    let Source::Imds(imds) = source.as_ref() else {
        return;
    };
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    let mut advance = None;
    let mut advance_read = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if advance_read.elapsed() >= ADVANCE_POLL_INTERVAL {
            advance = None;
        }
        if advance.is_none() {
            advance_read = tokio::time::Instant::now();
        }
        match read(imds, &mut advance).await {
            Ok(notices) => {
                failing = false;
                let changed = tx.send_if_modified(|current| {
                    if *current == notices {
                        return false;
                    }
                    *current = notices.clone();
                    true
                });
                if changed {
                    for notice in &notices {
                        info!(
                            kind = notice.kind.as_str(),
                            time = notice.time.as_deref().unwrap_or(""),
                            detail = %notice.detail,
                            "EC2 warns about this instance"
                        );
                    }
                    if notices.is_empty() {
                        info!("EC2's warnings about this instance are gone");
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
            // A failed read is no information: what was read last stands.
            Err(e) if !failing => {
                failing = true;
                warn!(error = %crate::error_chain(&e), "cannot read EC2's warnings from IMDS; keeping the last ones");
            }
            Err(e) => {
                debug!(error = %crate::error_chain(&e), "cannot read EC2's warnings from IMDS")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advance items' last answers stand between their reads, beside
    /// the imminent items read afresh; once due again they are read anew.
    #[tokio::test]
    async fn advance_warnings_stand_between_their_reads() {
        let served = crate::imds::loopback::LoopbackImds::start(&[(
            paths::REBALANCE,
            r#"{"noticeTime": "2026-12-07T08:17:00Z"}"#,
        )])
        .await;
        let imds = served.client();
        let kinds =
            |notices: Vec<Ec2Notice>| notices.into_iter().map(|n| n.kind).collect::<Vec<_>>();
        let mut advance = None;
        let first = read(&imds, &mut advance).await.unwrap();
        assert_eq!(kinds(first), [NoticeKind::RebalanceRecommendation]);
        served.set(paths::REBALANCE, None);
        served.set(
            paths::SPOT_INSTANCE_ACTION,
            Some(r#"{"action": "terminate", "time": "2026-12-07T08:22:00Z"}"#),
        );
        let second = read(&imds, &mut advance).await.unwrap();
        assert_eq!(
            kinds(second),
            [
                NoticeKind::SpotInterruption,
                NoticeKind::RebalanceRecommendation
            ],
            "the spot notice read at once, the recommendation as last read"
        );
        assert_eq!(served.reads(paths::REBALANCE), 1);
        assert_eq!(served.reads(paths::SPOT_INSTANCE_ACTION), 2);
        advance = None;
        let third = read(&imds, &mut advance).await.unwrap();
        assert_eq!(kinds(third), [NoticeKind::SpotInterruption]);
    }

    /// Each item as EC2 documents it becomes its warning, with its time.
    #[test]
    fn documented_items_are_read() {
        let notices = parse(
            Some(r#"{"action": "terminate", "time": "2026-12-07T08:22:00Z"}"#),
            Some(r#"{"noticeTime": "2026-12-07T08:17:00Z"}"#),
            Some("Terminated"),
            Some(
                r#"[{"NotBefore": "21 Jan 2027 09:00:43 GMT", "Code": "system-reboot",
                "Description": "scheduled reboot", "EventId": "instance-event-0d59937288b749b32",
                "NotAfter": "21 Jan 2027 09:17:23 GMT", "State": "active"},
                {"Code": "instance-stop", "State": "completed"}]"#,
            ),
        );
        let kinds: Vec<_> = notices.iter().map(|n| n.kind).collect();
        assert_eq!(kinds, NoticeKind::ALL.to_vec());
        assert_eq!(notices[0].time.as_deref(), Some("2026-12-07T08:22:00Z"));
        assert_eq!(notices[1].time.as_deref(), Some("2026-12-07T08:17:00Z"));
        assert_eq!(notices[3].time.as_deref(), Some("21 Jan 2027 09:00:43 GMT"));
        assert_eq!(notices[3].detail, "system-reboot: scheduled reboot");
        assert!(muster_proto::condition::validate(&[], &notices, None).is_ok());
    }

    /// Nothing to say reads as no warning: 404s, an Auto Scaling state
    /// other than Terminated, an empty maintenance list.
    #[test]
    fn quiet_items_are_no_warning() {
        assert!(parse(None, None, None, None).is_empty());
        assert!(parse(None, None, Some("InService"), Some("[]")).is_empty());
        assert!(parse(Some(""), None, Some("Warmed:Stopped"), None).is_empty());
    }

    /// Hostile text is cleaned and cut, and still makes its warning.
    #[test]
    fn hostile_text_is_bounded() {
        let long = format!("{{\"time\": \"\u{1b}[2J\"}}{}", "x".repeat(5000));
        let notices = parse(Some(&long), None, None, Some("not json"));
        assert_eq!(notices.len(), 2);
        assert!(notices[0].detail.len() <= 512);
        assert!(notices[1].detail == "not json");
        assert!(muster_proto::condition::validate(&[], &notices, None).is_ok());
    }

    /// Interruptions and terminations drain; the others only when asked.
    #[test]
    fn which_warnings_drain() {
        let rebalance = parse(None, Some(r#"{"noticeTime": "t"}"#), None, None);
        assert_eq!(leaving(&rebalance, false), None);
        assert_eq!(
            leaving(&rebalance, true).as_deref(),
            Some("EC2 gave a rebalance recommendation notice for t")
        );
        let spot = parse(
            Some(r#"{"action":"stop","time":"T"}"#),
            Some("{}"),
            None,
            None,
        );
        assert_eq!(
            leaving(&spot, false).as_deref(),
            Some("EC2 gave a spot interruption notice for T")
        );
        assert_eq!(leaving(&[], true), None);
    }
}
