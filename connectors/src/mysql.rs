//! MySQL and MariaDB read replicas.

use mysql_async::prelude::Queryable;

use crate::Error;

/// Connects to `url` and returns the server's version string.
pub async fn probe(url: &str) -> Result<String, Error> {
    let opts = mysql_async::Opts::from_url(url).map_err(mysql_async::Error::from)?;
    let mut conn = mysql_async::Conn::new(opts).await?;
    let version: Option<String> = conn.query_first("SELECT VERSION()").await?;
    conn.disconnect().await?;
    Ok(format!("MySQL/MariaDB {}", version.unwrap_or_default()))
}
