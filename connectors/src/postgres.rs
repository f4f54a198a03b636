//! PostgreSQL read replicas.

use crate::Error;

/// Connects to `url` and returns the server's version string.
pub async fn probe(url: &str) -> Result<String, Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(connection);
    let row = client
        .query_one("SELECT current_setting('server_version')", &[])
        .await?;
    let version: String = row.get(0);
    drop(client);
    let _ = task.await;
    Ok(format!("PostgreSQL {version}"))
}
