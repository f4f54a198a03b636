//! A sink's `fields` and `columns` checked against the contracts registered for its topics,
//! when the sink starts: a misspelt field (`emial`) would otherwise leave its column NULL
//! without a word. `walcast check` does the same without connecting, but only for topics a
//! source of the same file publishes; this covers every topic, from the registry.
//!
//! A topic whose contracts are not registered yet (its source has not started) is checked
//! when its first record is read, before anything of it is applied.

use std::collections::BTreeSet;

use apache_avro::Schema;

use crate::config::{SinkConfig, SinkKind};
use crate::registry::client::{Client, ClientError};

/// The full name of the built-in key of truncate events, which is no replica column.
const TRUNCATE_KEY: &str = "walcast.TruncateKey";

/// The latest version of each of `topic`'s own subjects (`<topic>-key` and
/// `<topic>-<record full name>`, the truncate key left out), with its subject.
pub(super) async fn contracts(
    registry: &Client,
    topic: &str,
) -> Result<Vec<(String, Schema)>, ClientError> {
    let prefix = format!("{topic}-");
    let subjects = registry.subjects().await?;
    let mut out = Vec::new();
    for subject in subjects.iter().filter(|s| s.starts_with(&prefix)) {
        // A subject of another topic whose name starts with this one's (`users-eu`) has
        // records of another name; its schema is read all the same, but only a record whose
        // subject is exactly `<topic>-<full name>` counts.
        let Some(text) = registry.latest(subject).await? else {
            continue;
        };
        let Ok(schema) = Schema::parse_str(&text) else {
            continue;
        };
        let own = match &schema {
            Schema::Record(r) => {
                let name = r.name.fullname(None);
                subject == &format!("{topic}-key")
                    || (subject == &format!("{topic}-{name}") && name != TRUNCATE_KEY)
            }
            _ => false,
        };
        if own {
            out.push((subject.clone(), schema));
        }
    }
    Ok(out)
}

/// The event fields a sink names: `fields`, and `columns` as (column, field).
fn named(sink: &SinkConfig) -> (Vec<String>, Vec<(String, String)>) {
    match &sink.kind {
        SinkKind::Postgres(t) | SinkKind::Mysql(t) => (
            t.fields.clone().unwrap_or_default(),
            t.columns
                .iter()
                .map(|(c, f)| (c.clone(), f.clone()))
                .collect(),
        ),
        SinkKind::Redis(r) => (r.fields.clone().unwrap_or_default(), Vec::new()),
    }
}

/// Why a topic's contracts do not fit the sink, or could not be read.
#[derive(Debug)]
pub(super) enum CheckError {
    /// A named field is in no contract of the topic: the message names the key, the field,
    /// the subjects and the fields they have.
    Unknown(String),
    /// The registry could not be asked.
    Registry(ClientError),
}

/// Checks the fields `sink` names against `topic`'s registered contracts. `Ok(false)` when
/// the topic has none registered yet (nothing to check against).
pub(super) async fn check(
    registry: &Client,
    sink: &SinkConfig,
    topic: &str,
) -> Result<bool, CheckError> {
    let (fields, columns) = named(sink);
    if fields.is_empty() && columns.is_empty() {
        return Ok(true);
    }
    let contracts = contracts(registry, topic)
        .await
        .map_err(CheckError::Registry)?;
    if contracts.is_empty() {
        return Ok(false);
    }
    match unknown(&fields, &columns, topic, &contracts) {
        Some(message) => Err(CheckError::Unknown(message)),
        None => Ok(true),
    }
}

/// The first field named in `fields` or `columns` that no contract has, as an error text.
fn unknown(
    fields: &[String],
    columns: &[(String, String)],
    topic: &str,
    contracts: &[(String, Schema)],
) -> Option<String> {
    let all: BTreeSet<&str> = contracts
        .iter()
        .filter_map(|(_, s)| match s {
            Schema::Record(r) => Some(r.fields.iter().map(|f| f.name.as_str())),
            _ => None,
        })
        .flatten()
        .collect();
    let subjects: Vec<&str> = contracts.iter().map(|(s, _)| s.as_str()).collect();
    let known = || {
        format!(
            "subjects {}; their fields: {}",
            subjects.join(", "),
            all.iter().copied().collect::<Vec<_>>().join(", ")
        )
    };
    if let Some(field) = fields.iter().find(|f| !all.contains(f.as_str())) {
        return Some(format!(
            "fields names {field}, which is not a field of any contract registered for topic {topic} ({}); name event fields, or leave {field} out",
            known()
        ));
    }
    columns
        .iter()
        .find(|(_, f)| !all.contains(f.as_str()))
        .map(|(column, field)| {
            format!(
                "columns.{column} is fed by field {field}, which is not a field of any contract registered for topic {topic} ({}); write column = \"event field\"",
                known()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_field_is_named_with_the_subjects_and_their_fields() {
        let schema = |t: &str| Schema::parse_str(t).unwrap();
        let contracts = [
            (
                "users.user-key".to_string(),
                schema(
                    r#"{"type": "record", "name": "UserKey", "fields": [{"name": "user_id", "type": "long"}]}"#,
                ),
            ),
            (
                "users.user-shop.UserCreated".to_string(),
                schema(
                    r#"{"type": "record", "name": "UserCreated", "namespace": "shop", "fields": [{"name": "user_id", "type": "long"}, {"name": "email", "type": "string"}]}"#,
                ),
            ),
        ];
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            unknown(&names(&["user_id", "email"]), &[], "users.user", &contracts),
            None
        );
        assert_eq!(
            unknown(&names(&["user_id", "emial"]), &[], "users.user", &contracts).unwrap(),
            "fields names emial, which is not a field of any contract registered for topic users.user (subjects users.user-key, users.user-shop.UserCreated; their fields: email, user_id); name event fields, or leave emial out"
        );
        assert_eq!(
            unknown(&[], &[("mail".into(), "emial".into())], "users.user", &contracts).unwrap(),
            "columns.mail is fed by field emial, which is not a field of any contract registered for topic users.user (subjects users.user-key, users.user-shop.UserCreated; their fields: email, user_id); write column = \"event field\""
        );
    }
}
