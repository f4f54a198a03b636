//! Configuration errors: every problem names the file, the key path and what was expected.
//!
//! A configuration is checked in full before walcast connects to anything, and every problem
//! found is reported at once, so an operator fixes a file in one pass instead of one error per
//! run. Key paths use the TOML structure the operator wrote: `source[0].table[2].key`.

use std::fmt;
use std::path::PathBuf;

/// One problem in a configuration file, located by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path with array indices, e.g. `sink[1].url_env`. Empty for the whole document.
    pub key: String,
    /// 1-based line in the file, when the parser could tell.
    pub line: Option<usize>,
    /// What was found and what is expected, in one sentence.
    pub message: String,
}

impl ConfigIssue {
    /// An issue with `key` (a path such as `sink[0].table`).
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            line: None,
            message: message.into(),
        }
    }
}

/// Why a configuration could not be loaded. Always permanent: fix the file and rerun.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the configuration file: {source}", path.display())]
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    #[error("{}", Issues { path, issues })]
    /// The file parsed, but some settings are wrong; every issue found is listed.
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every issue, in file order.
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// The located problems, empty when the file could not be read at all.
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { issues, .. } => issues,
        }
    }
}

struct Issues<'a> {
    path: &'a PathBuf,
    issues: &'a [ConfigIssue],
}

impl fmt::Display for Issues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some(line) = issue.line {
                write!(f, ":{line}")?;
            }
            if !issue.key.is_empty() {
                write!(f, ": {}", issue.key)?;
            }
            write!(f, ": {}", issue.message)?;
        }
        Ok(())
    }
}

/// Turns a serde error message into walcast's wording and the key it is about.
///
/// serde reports a missing or unknown key at the table that holds it; walcast names the key
/// itself, so `source[0]` + "missing field `slot`" becomes `source[0].slot`.
pub(crate) fn from_serde(path: &str, message: &str, line: Option<usize>) -> ConfigIssue {
    let join = |field: &str| {
        if path.is_empty() || path == "." || path == field {
            field.to_string()
        } else if path.ends_with(&format!(".{field}")) {
            path.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    let (key, message) = if let Some(field) = backticked_after(message, "missing field ") {
        (join(field), "required key is missing".to_string())
    } else if let Some(field) = backticked_after(message, "unknown field ") {
        let expected = expected_names(message);
        let msg = if expected.is_empty() {
            "unknown key; this table takes no keys".to_string()
        } else {
            format!("unknown key; expected one of: {expected}")
        };
        (join(field), msg)
    } else if let Some(variant) = backticked_after(message, "unknown variant ") {
        let expected = expected_names(message);
        (
            path.to_string(),
            format!("found \"{variant}\", expected one of: {expected}"),
        )
    } else if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, "?"));
        (
            path.to_string(),
            format!("found {found}, expected {}", plain_type(expected)),
        )
    } else if let Some(rest) = message.strip_prefix("invalid value: ") {
        let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, "?"));
        (
            path.to_string(),
            format!("found {found}, expected {}", plain_type(expected)),
        )
    } else {
        (path.to_string(), message.trim().to_string())
    };
    let key = if key == "." { String::new() } else { key };
    ConfigIssue { key, line, message }
}

/// serde lists choices as "expected one of `a`, `b`" or "expected `a` or `b`"; walcast as "a, b".
fn expected_names(message: &str) -> String {
    let Some((_, list)) = message.split_once(", expected ") else {
        return String::new();
    };
    let names: Vec<&str> = list.split('`').skip(1).step_by(2).collect();
    names.join(", ")
}

fn backticked_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split_once('`').map(|(name, _)| name)
}

/// serde's type names are Rust's; operators write TOML.
fn plain_type(expected: &str) -> String {
    let expected = expected.trim();
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "a sequence" => "an array".into(),
        "a map" => "a table".into(),
        "struct SourceConfig" | "struct TableConfig" => "a table".into(),
        other if other.starts_with("struct ") => "a table".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_field_names_the_key_itself() {
        let issue = from_serde("source[0]", "missing field `slot`", Some(3));
        assert_eq!(issue.key, "source[0].slot");
        assert_eq!(issue.message, "required key is missing");
    }

    #[test]
    fn unknown_field_lists_what_is_accepted() {
        let issue = from_serde(
            "kafka",
            "unknown field `broker`, expected one of `brokers`, `exactly_once`",
            None,
        );
        assert_eq!(issue.key, "kafka.broker");
        assert_eq!(
            issue.message,
            "unknown key; expected one of: brokers, exactly_once"
        );
    }

    #[test]
    fn rust_type_names_become_toml_words() {
        let issue = from_serde(
            "source[0].heartbeat_interval_ms",
            "invalid type: string \"10s\", expected u64",
            None,
        );
        assert_eq!(
            issue.message,
            "found string \"10s\", expected a non-negative integer"
        );
    }
}
