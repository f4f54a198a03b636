//! What makes a store a walcast sink type: its configuration, how its settings are checked,
//! how a lane connects, what `check --connect` asks of it, and what it allows.
//!
//! Adding a store is one file in this crate implementing [`Connector`] (and [`Sink`]), one
//! line in walcast's `stores!` list (`src/config/sink.rs`), and one line in the conformance
//! suite (`tests/conformance.rs`).

use std::future::Future;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{Error, Sink};

/// Where a store is: the `[[sink]]` keys naming its URL and its password, if any.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    /// `url`: the connection URL, written in the file.
    pub url: Option<&'a str>,
    /// `url_env`: the environment variable holding the URL.
    pub url_env: Option<&'a str>,
    /// `password_env`: the environment variable holding the password, set into the URL.
    pub password_env: Option<&'a str>,
}

/// `url` with its password replaced by `***`, for `Debug` output: settings and sinks hold
/// the resolved url, and never print its secret.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// A setting the store refuses: the key under the sink's table, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The key, relative to the `[[sink]]` table (`table`, `key_template`, `key[0]` …).
    pub key: String,
    /// What was found and what is expected.
    pub message: String,
}

impl Issue {
    /// An issue with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Issue {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A store walcast keeps read replicas in; see the module docs.
pub trait Connector: Sink + Send + Sized + 'static {
    /// The store's own `[[sink]]` keys (beside the keys every sink takes). Unknown keys are
    /// refused.
    type Config: DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static;

    /// The sink's `type`.
    const TYPE: &'static str;

    /// URL schemes the store is reached by.
    const SCHEMES: &'static [&'static str];

    /// The configuration's URL and password keys.
    fn endpoint(config: &Self::Config) -> Endpoint<'_>;

    /// Everything wrong with `config` that is knowable without connecting. Files it names
    /// are resolved against `base`, the configuration file's directory.
    fn check(config: &mut Self::Config, base: &Path) -> Vec<Issue>;

    /// How many lanes (connections applying a batch's keys concurrently) the store takes,
    /// when `requested` were asked for.
    fn lanes(requested: usize) -> usize {
        requested
    }

    /// Connects one lane to the store at `url` (secrets resolved), whose replica's positions
    /// are kept under `consumer` (the consumer group).
    fn connect(
        config: &Self::Config,
        url: &str,
        consumer: &str,
    ) -> impl Future<Output = Result<Self, Error>> + Send;

    /// Reaches the store at `url` for `walcast check --connect`, as [`Connector::connect`]
    /// would (the same TLS settings and credentials): one line naming the server and its
    /// version.
    fn probe(
        config: &Self::Config,
        url: &str,
    ) -> impl Future<Output = Result<String, Error>> + Send;
}
