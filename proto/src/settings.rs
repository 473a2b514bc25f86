//! What the settings of both binaries share: the error a bad value is
//! reported with, `NAME="value" is not valid: why`, the exit code that goes
//! with it (64), and reading a duration within bounds.
//!
//! Each binary still merges its own sources (the coordinator's flags and
//! `MUSTER_*` variables over its TOML file, the agent's flags, variables and
//! file, each named as the operator wrote it) and words its own reasons;
//! what they say when a value is bad, and how, is one thing, here. Wire
//! fields fail with [`crate::ValidationError`], which reads the same.

use std::fmt;
use std::time::Duration;

/// The exit code of a process whose settings are not valid: 64, EX_USAGE,
/// for any bad value, whatever its source.
pub const EXIT_INVALID: u8 = 64;

/// Values longer than this many characters are cut in messages by
/// [`Invalid::new`] and [`crate::ValidationError::new`].
pub const MAX_SHOWN_CHARS: usize = 64;

/// A setting that is not valid, shown as `NAME="value" is not valid: why`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The setting as the operator named it: a flag (`--cluster`), a
    /// variable, or a file key.
    pub name: String,
    /// Its value, as given (or cut short, or with a secret hidden).
    pub value: String,
    /// Why it is not valid; completes the sentence.
    pub reason: String,
}

impl Invalid {
    /// `name` holding `value`, the value cut to [`MAX_SHOWN_CHARS`]
    /// characters: for values that may be long or hostile.
    pub fn new(name: impl Into<String>, value: &str, reason: impl Into<String>) -> Self {
        Invalid {
            name: name.into(),
            value: cut(value),
            reason: reason.into(),
        }
    }

    /// `name` holding `value`, shown whole (a path the operator will want
    /// to see in full).
    pub fn whole(name: impl Into<String>, value: impl Into<String>, reason: impl ToString) -> Self {
        Invalid {
            name: name.into(),
            value: value.into(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_invalid(f, &self.name, &self.value, &self.reason)
    }
}

impl std::error::Error for Invalid {}

/// Writes `name="value" is not valid: reason`.
pub(crate) fn write_invalid(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    value: &str,
    reason: &str,
) -> fmt::Result {
    write!(f, "{name}={value:?} is not valid: {reason}")
}

/// `value` cut to [`MAX_SHOWN_CHARS`] characters, marked with `…` if cut.
pub(crate) fn cut(value: &str) -> String {
    let mut cut: String = value.chars().take(MAX_SHOWN_CHARS).collect();
    if cut.len() < value.len() {
        cut.push('…');
    }
    cut
}

/// A duration that could not be read, or lies out of bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Not a duration such as `10s` or `500ms`: the parser's words.
    NotADuration(String),
    /// A duration, but not within the bounds.
    OutOfRange {
        /// The shortest accepted.
        min: Duration,
        /// The longest accepted.
        max: Duration,
    },
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationError::NotADuration(why) => f.write_str(why),
            DurationError::OutOfRange { min, max } => write!(
                f,
                "must be between {} and {}",
                humantime::format_duration(*min),
                humantime::format_duration(*max)
            ),
        }
    }
}

impl std::error::Error for DurationError {}

/// Reads a duration written as humans do (`10s`, `5m`, `1h 30m`,
/// `500ms`) that must lie between `min` and `max`, both included.
pub fn duration_within(
    text: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, DurationError> {
    let value =
        humantime::parse_duration(text).map_err(|e| DurationError::NotADuration(e.to_string()))?;
    if !(min..=max).contains(&value) {
        return Err(DurationError::OutOfRange { min, max });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message names the setting, quotes the value and says why.
    #[test]
    fn invalid_reads_as_a_sentence() {
        let e = Invalid::new("--cluster", "Web", "may hold only lowercase letters");
        assert_eq!(
            e.to_string(),
            "--cluster=\"Web\" is not valid: may hold only lowercase letters"
        );
        assert_eq!(
            e,
            Invalid::whole("--cluster", "Web", "may hold only lowercase letters")
        );
    }

    /// `new` cuts a long value and marks the cut; `whole` keeps it.
    #[test]
    fn long_values_are_cut_unless_whole() {
        let long = "x".repeat(100);
        let e = Invalid::new("name", &long, "why");
        assert_eq!(e.value, format!("{}…", "x".repeat(64)));
        assert_eq!(Invalid::whole("name", long.clone(), "why").value, long);
        assert_eq!(cut("ééé"), "ééé");
    }

    /// Durations are read within their bounds, and say why when not.
    #[test]
    fn durations_within_bounds() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(
            duration_within("10s", min, max),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(duration_within("5m", min, max), Ok(max));
        let e = duration_within("0s", min, max).unwrap_err();
        assert_eq!(e, DurationError::OutOfRange { min, max });
        assert_eq!(e.to_string(), "must be between 1s and 5m");
        let e = duration_within("soon", min, max).unwrap_err();
        assert!(matches!(e, DurationError::NotADuration(_)), "{e}");
    }
}
