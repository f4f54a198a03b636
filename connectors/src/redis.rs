//! Redis read caches: one hash per key, version-guarded by a server-side script.
//!
//! A key's hash holds the fields kept and `_walcast_version`, the source version it was
//! written at, as 24 hex digits (`lsn` then `seq`, fixed width, so text order is version
//! order). A batch is one Lua script, which Redis runs atomically:
//! - an upsert writes the hash only if its version is higher than both the stored one and
//!   the key's tombstone: it sets the fields it carries, removes those it carries as NULL,
//!   leaves the others as they are (another event type's fields), and sets the key's TTL
//!   when one is configured;
//! - a delete removes the hash under the same guard and leaves its version in
//!   `walcast:tombstone:<key>` for `tombstone_ttl_secs`, so a late update cannot resurrect
//!   the key within that window;
//! - the consumer's positions go into the hash `walcast:offsets:<consumer>`, last, so an
//!   error part-way through a script never records progress it did not make;
//! - a change at or below the replica's floor, `walcast:floor:<key_template>`, is skipped.
//!
//! Each hash also holds `_walcast_replica`, the sink's key template: which replica wrote it.
//! A truncate raises the floor first (one script), then scans the keys the template can
//! make (`user:*` for `user:{user_id}`) and deletes, a page at a time in one script each,
//! the hashes of this replica older than it. Keys that are not hashes, hashes without
//! `_walcast_version` (not walcast's), and hashes of another replica whose keys the pattern
//! also matches (`user:{user_id}:addr:{address_id}`) are left alone. Once the scan is done,
//! `walcast:cleared:<key_template>` records it, so the truncate's copies from the topic's
//! other partitions do not scan again; a crash part-way leaves the floor raised, and the
//! redelivered truncate scans again. Tombstones stay: the floor outranks those older than
//! it, and they expire.
//!
//! NULL fields are left out of the hash. Values are written in their text form (times in
//! RFC 3339, UTC with `Z`), bytes as they are.
//!
//! A Redis that keeps nothing on disk loses the positions with the data when it restarts;
//! the runner then finds no stored positions and replays the topic from its start, which
//! rebuilds the cache.
//!
//! `rediss://` is TLS, always verified: against the system's roots (`SSL_CERT_FILE`
//! honoured) or `tls_ca_file` alone, as for the registry. The connection is ours (TCP, then
//! native-tls), handed to redis-rs as a stream: redis-rs's own native-tls support cannot
//! trust a CA file, and this way its TLS failures come back typed, so an untrusted
//! certificate is a permanent error naming the key while a reset stays transient. AUTH uses
//! the url's user name (ACL users) and the password from `password_env`; a refused login
//! is permanent too.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Script};

use serde::Deserialize;

use crate::connector::{Connector, Endpoint, Issue};
use crate::rounds::rounds;
use crate::sink::{Batch, Change, Op, Position, Sink, Value, Version};
use crate::table::{check_ca_file, newest_truncate};
use crate::tls::{explain, refused_login, TlsMode, TlsSettings};
use crate::Error;

/// The `[[sink]]` keys of `type = "redis"`: one hash per key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Connection URL (`redis://` or `rediss://`); exactly one of `url` and `url_env`.
    pub url: Option<String>,
    /// Environment variable holding the connection URL, instead of `url`.
    pub url_env: Option<String>,
    /// Environment variable holding the password, which overrides the one in the URL.
    pub password_env: Option<String>,
    /// Key template with `{field}` placeholders, e.g. `user:{user_id}`.
    pub key_template: String,
    /// Event fields stored in the hash; default all.
    pub fields: Option<Vec<String>>,
    /// Expiry of each key; 0 keeps keys forever.
    #[serde(default)]
    pub ttl_secs: u64,
    /// How long a deleted key's tombstone version is kept.
    #[serde(default = "default_tombstone_ttl_secs")]
    pub tombstone_ttl_secs: u64,
    /// With `rediss://`: PEM file of the CA(s) trusted instead of the system's roots.
    pub tls_ca_file: Option<PathBuf>,
}

fn default_tombstone_ttl_secs() -> u64 {
    86_400
}

impl Connector for RedisSink {
    type Config = RedisConfig;
    const TYPE: &'static str = "redis";
    const SCHEMES: &'static [&'static str] = &["redis", "rediss"];

    fn endpoint(config: &RedisConfig) -> Endpoint<'_> {
        Endpoint {
            url: config.url.as_deref(),
            url_env: config.url_env.as_deref(),
            password_env: config.password_env.as_deref(),
        }
    }

    fn check(config: &mut RedisConfig, base: &Path) -> Vec<Issue> {
        let mut issues: Vec<Issue> = check_key_template(&config.key_template)
            .err()
            .map(|why| Issue::new("key_template", why))
            .into_iter()
            .collect();
        let file_issues = check_ca_file(&mut config.tls_ca_file, base);
        let file_ok = file_issues.is_empty();
        issues.extend(file_issues);
        let plain = config
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("redis://"));
        if file_ok && config.tls_ca_file.is_some() && plain {
            issues.push(Issue::new(
                "tls_ca_file",
                "is only used with a rediss:// url (TLS); use one, or remove tls_ca_file",
            ));
        }
        issues
    }

    async fn connect(config: &RedisConfig, url: &str, consumer: &str) -> Result<Self, Error> {
        RedisSink::connect(RedisSettings {
            url: url.to_string(),
            key_template: config.key_template.clone(),
            fields: config.fields.clone(),
            ttl_secs: config.ttl_secs,
            tombstone_ttl_secs: config.tombstone_ttl_secs,
            consumer: consumer.to_string(),
            tls_ca_file: config.tls_ca_file.clone(),
        })
        .await
    }

    async fn probe(config: &RedisConfig, url: &str) -> Result<String, Error> {
        probe(&Target::new(url, config.tls_ca_file.clone())?).await
    }
}

/// The `{field}` names of a key template, in order.
pub fn placeholders(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push(rest[open + 1..open + close].to_string());
        rest = &rest[open + close + 1..];
    }
    out
}

/// Appends a key value, its `reserved` characters percent-encoded (as UTF-8 bytes).
fn push_escaped(out: &mut String, text: &str, reserved: &[char]) {
    if !text.contains(reserved) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        if reserved.contains(&c) {
            let mut utf8 = [0; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(out, "%{byte:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// What values must not hold as they are, for a key to tell its values apart: the first
/// character of the text between each two placeholders (a value ends where it first
/// appears), and `%`, the escape itself. Nothing for a template of one placeholder, whose
/// keys are always told apart.
fn reserved(template: &str) -> Vec<char> {
    let mut separators = Vec::new();
    let mut rest = template;
    let mut after_placeholder = false;
    while let Some(open) = rest.find('{') {
        if after_placeholder {
            if let Some(c) = rest[..open].chars().next() {
                if !separators.contains(&c) {
                    separators.push(c);
                }
            }
        }
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        rest = &rest[open + close + 1..];
        after_placeholder = true;
    }
    if separators.is_empty() {
        return separators;
    }
    let mut out = vec!['%'];
    out.extend(separators.into_iter().filter(|&c| c != '%'));
    out
}

/// A key template has at least one `{field}` placeholder, none empty or unclosed, and
/// text between each two (`{a}{b}` would make one key of `xy`, `z` and `x`, `yz`).
fn check_key_template(template: &str) -> Result<(), String> {
    let mut placeholders = 0;
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("found \"{template}\" with an unclosed '{{', expected placeholders such as {{user_id}}"));
        };
        if close == 1 {
            return Err(format!("found \"{template}\" with an empty '{{}}', expected placeholders such as {{user_id}}"));
        }
        if placeholders > 0 && rest.starts_with('%') {
            return Err(format!("found \"{template}\" with '%' right after a placeholder; '%' escapes the separators inside values, so it cannot be one: use another character, e.g. \"{{a}}:{{b}}\""));
        }
        if placeholders > 0 && open == 0 {
            return Err(format!("found \"{template}\" with two placeholders side by side, which would make one key of two (\"ab\", \"c\" and \"a\", \"bc\"); put a separator between them, e.g. \"{{a}}:{{b}}\""));
        }
        placeholders += 1;
        rest = &rest[open + close + 1..];
    }
    if placeholders == 0 {
        return Err(format!("found \"{template}\" without a placeholder, so every event would write the same key; expected e.g. \"user:{{user_id}}\""));
    }
    Ok(())
}

/// Connects as a lane would (`target`), sends PING and returns the server's version.
pub async fn probe(target: &Target) -> Result<String, Error> {
    let mut conn = target.open().await?;
    let pong: String = ::redis::cmd("PING").query_async(&mut conn).await?;
    let info: String = ::redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    Ok(format!("Redis {version} ({pong})"))
}

/// How long a TLS handshake may take: well within `check --connect`'s default deadline.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a connection goes and how it authenticates: host and port, TLS for `rediss://`,
/// and the database, user name and password of the url.
#[derive(Clone)]
pub struct Target {
    host: String,
    port: u16,
    redis: RedisConnectionInfo,
    tls: Option<tokio_native_tls::TlsConnector>,
    has_ca_file: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the connection info: it holds the password.
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Target {
    /// `redis://` or `rediss://` (TLS, verified against `ca_file` or the system's roots).
    pub fn new(url: &str, ca_file: Option<PathBuf>) -> Result<Target, Error> {
        let (tls, url) = match url.strip_prefix("rediss://") {
            Some(rest) => (true, format!("redis://{rest}")),
            None => (false, url.to_string()),
        };
        let info = url.as_str().into_connection_info()?;
        let ConnectionAddr::Tcp(host, port) = info.addr else {
            return Err(Error::Setup(
                "url is not a redis:// or rediss:// address with a host".into(),
            ));
        };
        let has_ca_file = ca_file.is_some();
        let tls = if tls {
            let settings = TlsSettings {
                mode: TlsMode::VerifyFull,
                ca_file,
            };
            settings
                .connector()?
                .map(tokio_native_tls::TlsConnector::from)
        } else {
            None
        };
        Ok(Target {
            host,
            port,
            redis: info.redis,
            tls,
            has_ca_file,
        })
    }

    /// A connection that fails rather than waits when the server went away; it has
    /// answered PING, so a refused login shows here, as [`Error::Security`].
    async fn open(&self) -> Result<MultiplexedConnection, Error> {
        let connecting = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(::redis::RedisError::from)?;
            let _ = tcp.set_nodelay(true);
            let config =
                ::redis::AsyncConnectionConfig::new().set_response_timeout(Duration::from_secs(30));
            let mut conn = match &self.tls {
                None => MultiplexedConnection::new_with_config(&self.redis, tcp, config)
                    .await
                    .map(|(conn, driver)| {
                        tokio::spawn(driver);
                        conn
                    }),
                Some(tls) => {
                    // A server without TLS on this port reads the handshake as an
                    // unfinished command and says nothing: give up sooner, saying so.
                    let handshake = tls.connect(&self.host, tcp);
                    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                        .await
                        .map_err(|_| self.no_handshake())?
                        .map_err(|e| {
                            let reason = e.to_string();
                            explain("Redis", &reason, self.has_ca_file, false).unwrap_or_else(
                                || Error::Redis(std::io::Error::other(reason).into()),
                            )
                        })?;
                    MultiplexedConnection::new_with_config(&self.redis, stream, config)
                        .await
                        .map(|(conn, driver)| {
                            tokio::spawn(driver);
                            conn
                        })
                }
            }
            .map_err(|e| self.classify(e))?;
            let _: String = ::redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(|e| self.classify(e))?;
            Ok(conn)
        };
        match tokio::time::timeout(Duration::from_secs(10), connecting).await {
            Ok(result) => result,
            Err(_) => Err(Error::Redis(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection to {}:{} within 10 s", self.host, self.port),
                )
                .into(),
            )),
        }
    }

    /// A handshake that got no answer: transient (the server may be busy), naming the
    /// likelier cause.
    fn no_handshake(&self) -> Error {
        Error::Redis(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no TLS handshake from {}:{} within {} s; if the server does not speak TLS on this port, use a redis:// url or its TLS port",
                    self.host,
                    self.port,
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            )
            .into(),
        )
    }

    fn classify(&self, e: ::redis::RedisError) -> Error {
        let refused = e.kind() == ::redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"));
        if !refused {
            return Error::Redis(e);
        }
        let detail = match e.code() {
            Some("NOAUTH") => "the server requires AUTH, and url has no password",
            _ => "AUTH failed: wrong user name or password, or the user is disabled",
        };
        refused_login("Redis", detail)
    }
}

/// What a Redis cache is. Its `Debug` hides the url's password.
#[derive(Clone)]
pub struct RedisSettings {
    /// Connection URL, with its password resolved.
    pub url: String,
    /// Key of each hash, with `{field}` placeholders filled from the event's key.
    pub key_template: String,
    /// Event fields stored; `None` stores all.
    pub fields: Option<Vec<String>>,
    /// Expiry of each key; 0 keeps keys forever.
    pub ttl_secs: u64,
    /// How long a deleted key's tombstone version is kept.
    pub tombstone_ttl_secs: u64,
    /// Names this cache's positions (the consumer group).
    pub consumer: String,
    /// With `rediss://`: the CA(s) trusted instead of the system's roots.
    pub tls_ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &crate::connector::redacted(&self.url))
            .field("key_template", &self.key_template)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// A Redis cache, connected.
#[derive(Debug)]
pub struct RedisSink {
    target: Target,
    /// `None` after an error; the next `apply` connects again.
    conn: Option<MultiplexedConnection>,
    settings: RedisSettings,
    /// The template's `{field}` names.
    placeholders: Vec<String>,
    /// `%` and the characters of the template's own text: percent-encoded inside values,
    /// so two different keys never make one Redis key (`{a}:{b}` of `x:y`, `z` and of `x`,
    /// `y:z`).
    reserved: Vec<char>,
    script: Script,
}

/// KEYS: the offsets hash, the floor, then per change its hash and its tombstone.
/// ARGV: ttl, tombstone ttl, change count, position count, the replica (its key template);
/// per change: op (`u`/`d`), version, field count, null count, then field/value pairs, then
/// the null fields' names; then per position: field, offset. An upsert sets the fields it
/// carries and removes those it carries as NULL: the others stay as they are.
const APPLY: &str = r"
local ttl, tomb_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local changes, positions = tonumber(ARGV[3]), tonumber(ARGV[4])
local replica = ARGV[5]
local floor = redis.call('GET', KEYS[2])
local a = 6
for i = 1, changes do
  local key, tomb = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local op, version = ARGV[a], ARGV[a + 1]
  local n, nulls = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  a = a + 4
  local stored = redis.call('HGET', key, '_walcast_version')
  local buried = redis.call('GET', tomb)
  if (not floor or floor < version) and (not stored or stored < version)
      and (not buried or buried < version) then
    if op == 'u' then
      local args = {'_walcast_version', version, '_walcast_replica', replica}
      for j = 0, n - 1 do
        args[#args + 1] = ARGV[a + 2 * j]
        args[#args + 1] = ARGV[a + 2 * j + 1]
      end
      if nulls > 0 then
        redis.call('HDEL', key, unpack(ARGV, a + 2 * n, a + 2 * n + nulls - 1))
      end
      redis.call('HSET', key, unpack(args))
      if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    else
      redis.call('DEL', key)
      if tomb_ttl > 0 then
        redis.call('SET', tomb, version, 'EX', tomb_ttl)
      else
        redis.call('SET', tomb, version)
      end
    end
  end
  a = a + 2 * n + nulls
end
for i = 1, positions do
  redis.call('HSET', KEYS[1], ARGV[a], ARGV[a + 1])
  a = a + 2
end
return changes
";

/// KEYS: the floor, then how far the replica was cleared. ARGV: the truncate's version.
/// Raises the floor to it; returns 1 when the replica was already cleared that far (a copy
/// of the truncate from another partition), else 0.
const RAISE_FLOOR: &str = r"
local floor = redis.call('GET', KEYS[1])
if not floor or floor < ARGV[1] then redis.call('SET', KEYS[1], ARGV[1]) end
local cleared = redis.call('GET', KEYS[2])
if cleared and cleared >= ARGV[1] then return 1 end
return 0
";

/// KEYS: the cleared mark. ARGV: the truncate's version. Records that every hash older
/// than it is gone.
const CLEARED: &str = r"
local cleared = redis.call('GET', KEYS[1])
if not cleared or cleared < ARGV[1] then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
";

/// KEYS: keys found by a scan. ARGV: the truncate's version, the replica (its key
/// template). Deletes the replica's hashes older than the version: hashes marked with the
/// replica's `_walcast_replica` (or, written before the mark, with none). Anything else,
/// another sink's hashes included, is left alone. Tombstones are not touched: the floor
/// outranks every one older than it, and they expire.
const CLEAR_OLDER: &str = r"
local removed = 0
for _, key in ipairs(KEYS) do
  if redis.call('TYPE', key).ok == 'hash' then
    local fields = redis.call('HMGET', key, '_walcast_version', '_walcast_replica')
    local version, owner = fields[1], fields[2]
    if version and version < ARGV[1] and (not owner or owner == ARGV[2]) then
      redis.call('DEL', key)
      removed = removed + 1
    end
  end
end
return removed
";

/// The glob pattern matching every key `template` makes: placeholders become `*`, and the
/// glob's special characters elsewhere are escaped.
fn key_pattern(template: &str) -> String {
    let mut out = String::new();
    let mut in_placeholder = false;
    for ch in template.chars() {
        match ch {
            '{' => {
                in_placeholder = true;
                out.push('*');
            }
            '}' if in_placeholder => in_placeholder = false,
            _ if in_placeholder => {}
            '*' | '?' | '[' | ']' | '\\' => {
                out.push('\\');
                out.push(ch);
            }
            _ => out.push(ch),
        }
    }
    out
}

fn field_of<'a>(fields: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(f, _)| f == name).map(|(_, v)| v)
}

fn version_text(v: Version) -> String {
    format!("{:016x}{:08x}", v.lsn, v.seq)
}

fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Bytes(b) => Some(b.clone()),
        other => crate::text::value(other, "Z").map(String::into_bytes),
    }
}

impl RedisSink {
    /// Connects and checks the key template.
    pub async fn connect(settings: RedisSettings) -> Result<Self, Error> {
        if !settings.key_template.contains('{') {
            return Err(Error::Setup(format!(
                "key_template {:?} has no {{field}} placeholder, so every event would write the same key; name the key fields, e.g. \"user:{{user_id}}\"",
                settings.key_template
            )));
        }
        let target = Target::new(&settings.url, settings.tls_ca_file.clone())?;
        let conn = target.open().await?;
        Ok(RedisSink {
            target,
            conn: Some(conn),
            placeholders: placeholders(&settings.key_template),
            reserved: reserved(&settings.key_template),
            settings,
            script: Script::new(APPLY),
        })
    }

    /// The change's Redis key, from the template.
    fn key(&self, change: &Change) -> Result<String, Error> {
        if let Some(e) = change.key_left_out(&self.placeholders, || {
            format!("key_template {:?}", self.settings.key_template)
        }) {
            return Err(e);
        }
        let mut out = String::new();
        let mut rest = self.settings.key_template.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').ok_or_else(|| {
                Error::Setup(format!(
                    "key_template {:?} has an unclosed {{",
                    self.settings.key_template
                ))
            })? + open;
            let name = &rest[open + 1..close];
            let value = field_of(&change.key, name).ok_or_else(|| {
                    let fields: Vec<&str> = change.key.iter().map(|(f, _)| f.as_str()).collect();
                    Error::Setup(format!(
                        "key_template {:?} names {{{name}}}, which is not a key field of the events (key fields: {}); use key fields only, so each key maps to one hash",
                        self.settings.key_template,
                        fields.join(", ")
                    ))
                })?;
            let text = crate::text::value(value, "Z").unwrap_or_default();
            push_escaped(&mut out, &text, &self.reserved);
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn kept(&self, name: &str) -> bool {
        self.settings
            .fields
            .as_ref()
            .is_none_or(|f| f.iter().any(|k| k == name))
    }

    fn offsets_key(&self) -> String {
        format!("walcast:offsets:{}", self.settings.consumer)
    }

    /// The replica's floor: the version of the newest truncate applied.
    fn floor_key(&self) -> String {
        format!("walcast:floor:{}", self.settings.key_template)
    }

    /// How far the replica was cleared by truncates.
    fn cleared_key(&self) -> String {
        format!("walcast:cleared:{}", self.settings.key_template)
    }

    /// Raises the floor to `version`, then deletes the replica's hashes older than it, a
    /// scan page at a time, unless an earlier copy of the truncate did already; records
    /// that it did last, so a crash part-way has the redelivered copy scan again.
    async fn truncate(
        &self,
        conn: &mut MultiplexedConnection,
        version: Version,
    ) -> Result<(), ::redis::RedisError> {
        let version = version_text(version);
        let done: i64 = Script::new(RAISE_FLOOR)
            .key(self.floor_key())
            .key(self.cleared_key())
            .arg(&version)
            .invoke_async(conn)
            .await?;
        if done == 1 {
            return Ok(());
        }
        let pattern = key_pattern(&self.settings.key_template);
        let clear = Script::new(CLEAR_OLDER);
        let mut cursor: u64 = 0;
        loop {
            // Keys as bytes: another application's key need not be UTF-8.
            let (next, keys): (u64, Vec<Vec<u8>>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            if !keys.is_empty() {
                let mut invocation = clear.prepare_invoke();
                for key in &keys {
                    invocation.key(key.as_slice());
                }
                let _: i64 = invocation
                    .arg(&version)
                    .arg(&self.settings.key_template)
                    .invoke_async(conn)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let _: i64 = Script::new(CLEARED)
            .key(self.cleared_key())
            .arg(&version)
            .invoke_async(conn)
            .await?;
        Ok(())
    }

    async fn conn(&mut self) -> Result<MultiplexedConnection, Error> {
        if self.conn.is_none() {
            self.conn = Some(self.target.open().await?);
        }
        Ok(self.conn.clone().expect("connected"))
    }
}

impl Sink for RedisSink {
    async fn apply(&mut self, batch: &Batch) -> Result<(), Error> {
        let mut conn = self.conn().await?;
        if let Some(version) = newest_truncate(&batch.changes) {
            if let Err(e) = self.truncate(&mut conn, version).await {
                self.conn = None;
                return Err(e.into());
            }
        }
        // The script itself skips what the floor covers. It writes the changes in order:
        // round after round, so a key's changes in version order ([`crate::rounds`]).
        let rounds = rounds(&batch.changes, Version { lsn: 0, seq: 0 }, |f| self.kept(f));
        let changes: Vec<&Change> = rounds
            .iter()
            .flat_map(|r| r.upserts.iter().chain(&r.deletes))
            .copied()
            .collect();
        let script = self.script.clone();
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.offsets_key())
            .key(self.floor_key())
            .arg(self.settings.ttl_secs)
            .arg(self.settings.tombstone_ttl_secs)
            .arg(changes.len())
            .arg(batch.positions.len())
            .arg(&self.settings.key_template);
        for change in changes {
            let key = self.key(change)?;
            invocation.key(&key).key(format!("walcast:tombstone:{key}"));
            let mut kept: Vec<(&String, Vec<u8>)> = Vec::new();
            let mut nulls: Vec<&String> = Vec::new();
            if let Op::Upsert(fields) = &change.op {
                let extra = fields
                    .iter()
                    .filter(|(f, _)| field_of(&change.key, f).is_none());
                for (f, v) in change.key.iter().chain(extra) {
                    if !self.kept(f) {
                        continue;
                    }
                    match bytes(v) {
                        Some(v) => kept.push((f, v)),
                        None => nulls.push(f),
                    }
                }
            }
            let op = if matches!(change.op, Op::Delete) {
                "d"
            } else {
                "u"
            };
            invocation
                .arg(op)
                .arg(version_text(change.version))
                .arg(kept.len())
                .arg(nulls.len());
            for (f, v) in kept {
                invocation.arg(f.as_str()).arg(v);
            }
            for f in nulls {
                invocation.arg(f.as_str());
            }
        }
        for p in &batch.positions {
            invocation
                .arg(format!("{}/{}", p.topic, p.partition))
                .arg(p.next_offset);
        }
        let result: Result<i64, _> = invocation.invoke_async(&mut conn).await;
        if result.is_err() {
            self.conn = None;
        }
        result?;
        Ok(())
    }

    /// Hashes take any field: nothing to prepare.
    async fn prepare(&mut self, _fields: &[crate::sink::Field]) -> Result<(), Error> {
        Ok(())
    }

    async fn positions(&mut self) -> Result<Vec<Position>, Error> {
        let mut conn = self.conn().await?;
        let stored: Result<Vec<(String, i64)>, _> = ::redis::cmd("HGETALL")
            .arg(self.offsets_key())
            .query_async(&mut conn)
            .await;
        if stored.is_err() {
            self.conn = None;
        }
        let stored = stored?;
        let mut out: Vec<Position> = stored
            .into_iter()
            .filter_map(|(field, next_offset)| {
                let (topic, partition) = field.rsplit_once('/')?;
                Some(Position {
                    topic: topic.to_string(),
                    partition: partition.parse().ok()?,
                    next_offset,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::{check_key_template, key_pattern, placeholders, push_escaped, reserved};

    #[test]
    fn placeholders_are_read_from_the_template() {
        assert_eq!(
            placeholders("user:{region}:{user_id}"),
            ["region", "user_id"]
        );
        assert!(placeholders("user").is_empty());
    }

    #[test]
    fn a_truncate_scans_every_key_the_template_makes_and_only_those() {
        assert_eq!(key_pattern("user:{user_id}"), "user:*");
        assert_eq!(key_pattern("{region}/u[{id}]*"), "*/u\\[*\\]\\*");
        assert_eq!(key_pattern("a?{id}\\b"), "a\\?*\\\\b");
    }

    #[test]
    fn key_templates_need_a_placeholder() {
        assert!(check_key_template("user:{user_id}").is_ok());
        assert!(check_key_template("user").is_err());
        assert!(check_key_template("user:{").is_err());
        assert!(check_key_template("user:{}").is_err());
        assert!(check_key_template("{a}{b}").is_err(), "side by side");
        assert!(check_key_template("{a}:{b}").is_ok());
        assert!(check_key_template("{a}%{b}").is_err(), "'%' escapes");
        assert!(check_key_template("%{a}:{b}%").is_ok());
    }

    #[test]
    fn a_value_holding_the_templates_own_text_is_escaped_so_keys_never_meet() {
        assert!(
            reserved("user:{id}:x").is_empty(),
            "one placeholder: keys unchanged"
        );
        assert_eq!(reserved("{region}/u[{id}]*"), ['%', '/']);
        let reserved = reserved("user:{a}:{b}");
        assert_eq!(reserved, ['%', ':']);
        let key = |a: &str, b: &str| {
            let mut out = String::from("user:");
            push_escaped(&mut out, a, &reserved);
            out.push(':');
            push_escaped(&mut out, b, &reserved);
            out
        };
        assert_eq!(key("x:y", "z"), "user:x%3Ay:z");
        assert_eq!(key("x", "y:z"), "user:x:y%3Az");
        assert_eq!(key("42", "7"), "user:42:7", "most values are left alone");
        assert_eq!(key("100%", "é"), "user:100%25:é");
        let reserved = super::reserved("{a}→{b}");
        let mut out = String::new();
        push_escaped(&mut out, "a→b", &reserved);
        assert_eq!(out, "a%E2%86%92b");
    }
}
