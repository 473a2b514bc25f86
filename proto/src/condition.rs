//! What an agent says about its node beyond being alive: the results of
//! the node's own health checks, the warnings EC2 gives the instance, and
//! whether the node is leaving. All three ride on the heartbeat; the
//! coordinator takes an unhealthy or leaving node out of its cluster's round
//! robin at once (docs/architecture.md, "Node states").

use serde::{Deserialize, Serialize};

use crate::validate::{self, ValidationError};

/// Most health checks one agent may report.
pub const MAX_CHECKS: usize = 32;
/// Most EC2 warnings one heartbeat may carry.
pub const MAX_NOTICES: usize = 8;
/// Longest output, detail or reason carried, in bytes; the agent cuts
/// longer ones ([`cut`]).
pub const MAX_TEXT: usize = 512;

/// What a health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// An HTTP GET that must answer 2xx or 3xx (and may have to hold a
    /// given text).
    Http,
    /// A TCP connect that must succeed.
    Tcp,
    /// A command, run without a shell, that must exit 0.
    Command,
}

impl CheckKind {
    /// The lowercase name used on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Command => "command",
        }
    }
}

/// One health check's standing, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckReport {
    /// The check's name from the agent's settings: a DNS label, unique on
    /// the node.
    pub name: String,
    /// What it does.
    pub kind: CheckKind,
    /// Whether it counts as passing, after its failure and success
    /// thresholds. A check that has not passed yet does not pass.
    pub passing: bool,
    /// What its last run said (a status line, an error, a command's
    /// output), at most [`MAX_TEXT`] bytes.
    pub output: String,
}

/// A warning EC2 gives an instance through IMDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// `spot/instance-action`: EC2 will stop or terminate a Spot instance
    /// in about two minutes.
    SpotInterruption,
    /// `events/recommendations/rebalance`: a Spot instance is at higher
    /// risk of interruption.
    RebalanceRecommendation,
    /// `autoscaling/target-lifecycle-state` says `Terminated`: Auto Scaling
    /// is taking the instance out.
    AutoscalingTermination,
    /// `events/maintenance/scheduled`: EC2 has scheduled maintenance
    /// (a reboot, a stop, a retirement).
    ScheduledMaintenance,
}

impl NoticeKind {
    /// Every kind.
    pub const ALL: [NoticeKind; 4] = [
        NoticeKind::SpotInterruption,
        NoticeKind::RebalanceRecommendation,
        NoticeKind::AutoscalingTermination,
        NoticeKind::ScheduledMaintenance,
    ];

    /// The name used on the wire, in `/metrics` and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::SpotInterruption => "spot_interruption",
            NoticeKind::RebalanceRecommendation => "rebalance_recommendation",
            NoticeKind::AutoscalingTermination => "autoscaling_termination",
            NoticeKind::ScheduledMaintenance => "scheduled_maintenance",
        }
    }

    /// Whether the instance is going for certain, so the node drains at
    /// once; the others drain only where the agent is set to.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            NoticeKind::SpotInterruption | NoticeKind::AutoscalingTermination
        )
    }
}

/// One warning, with what IMDS said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Notice {
    /// Which warning.
    pub kind: NoticeKind,
    /// The time EC2 gives (the interruption's, the rebalance notice's, the
    /// maintenance window's start), as IMDS wrote it, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// What IMDS answered, at most [`MAX_TEXT`] bytes.
    pub detail: String,
}

/// `text` cut to at most [`MAX_TEXT`] bytes on a character boundary, with
/// `…` where it was cut.
pub fn cut(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TEXT - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Untrusted `text` (a check's output, what IMDS said) made fit to carry:
/// trimmed, carriage returns dropped, other control characters but
/// newlines and tabs replaced by U+FFFD, and [`cut`] to [`MAX_TEXT`]
/// bytes, so that it passes [`validate`].
pub fn fit(text: &str) -> String {
    let clean: String = text
        .trim()
        .chars()
        .filter(|c| *c != '\r')
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect();
    cut(&clean)
}

/// Checks a free text field: at most [`MAX_TEXT`] bytes, no control
/// characters but newlines and tabs.
fn text(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.len() > MAX_TEXT {
        return Err(ValidationError::new(
            field,
            &cut(value),
            "is longer than 512 bytes",
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ValidationError::new(
            field,
            &value.escape_debug().to_string(),
            "holds control characters",
        ));
    }
    Ok(())
}

/// Checks what a heartbeat says about the node's condition.
pub fn validate(
    checks: &[CheckReport],
    notices: &[Ec2Notice],
    leaving: Option<&str>,
) -> Result<(), ValidationError> {
    if checks.len() > MAX_CHECKS {
        return Err(ValidationError::new(
            "checks",
            &checks.len().to_string(),
            "is more than 32 checks",
        ));
    }
    for (i, check) in checks.iter().enumerate() {
        validate::dns_label("checks.name", &check.name)?;
        if checks[..i].iter().any(|c| c.name == check.name) {
            return Err(ValidationError::new(
                "checks.name",
                &check.name,
                "names two checks",
            ));
        }
        text("checks.output", &check.output)?;
    }
    if notices.len() > MAX_NOTICES {
        return Err(ValidationError::new(
            "notices",
            &notices.len().to_string(),
            "is more than 8 notices",
        ));
    }
    for notice in notices {
        text("notices.detail", &notice.detail)?;
        if let Some(time) = &notice.time {
            text("notices.time", time)?;
        }
    }
    if let Some(reason) = leaving {
        if reason.trim().is_empty() {
            return Err(ValidationError::new(
                "leaving",
                reason,
                "must say why the node is leaving",
            ));
        }
        text("leaving", reason)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, output: &str) -> CheckReport {
        CheckReport {
            name: name.to_owned(),
            kind: CheckKind::Http,
            passing: true,
            output: output.to_owned(),
        }
    }

    /// Long text is cut on a character boundary and then passes.
    #[test]
    fn cut_keeps_within_bounds() {
        let long = "é".repeat(400);
        let short = cut(&long);
        assert!(short.len() <= MAX_TEXT && short.ends_with('…'));
        assert!(validate(&[check("web", &short)], &[], None).is_ok());
        assert_eq!(cut("ok"), "ok");
    }

    /// Each bound is refused with the field it concerns.
    #[test]
    fn bad_condition_is_refused() {
        let long = "x".repeat(MAX_TEXT + 1);
        // (checks, notices, leaving, the field refused)
        type Case<'a> = (Vec<CheckReport>, Vec<Ec2Notice>, Option<&'a str>, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (vec![check("Web!", "")], vec![], None, "checks.name"),
            (
                vec![check("a", ""), check("a", "")],
                vec![],
                None,
                "checks.name",
            ),
            (vec![check("a", &long)], vec![], None, "checks.output"),
            (vec![check("a", "bell\u{7}")], vec![], None, "checks.output"),
            (
                (0..33).map(|i| check(&format!("c{i}"), "")).collect(),
                vec![],
                None,
                "checks",
            ),
            (vec![], vec![], Some("  "), "leaving"),
            (
                vec![],
                vec![Ec2Notice {
                    kind: NoticeKind::SpotInterruption,
                    time: None,
                    detail: long.clone(),
                }],
                None,
                "notices.detail",
            ),
        ];
        for (checks, notices, leaving, field) in cases {
            let e = validate(&checks, &notices, leaving).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }
}
