//! Redis read caches: one hash per key.

use crate::Error;

/// Connects to `url`, sends PING and returns the server's version.
pub async fn probe(url: &str) -> Result<String, Error> {
    let client = ::redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
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
