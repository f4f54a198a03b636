//! Spec: the admin endpoint on `[admin] listen`. `/healthz` answers while the process lives;
//! `/readyz` is 200 only while every part runs, and otherwise 503 naming the part, its state
//! and its error; `/metrics` lists every metric of issue #15 from the start, and its counters
//! move with the data. An address in use stops the daemon at start, naming the key. With
//! `log_format = "json"` every log line is a JSON object.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::daemon::{Daemon, Setup};
use crate::support::{wait_for, Stack};

/// Every metric name issue #15 requires, as the samples (or, for a family without series yet,
/// its `# TYPE` line) spell it.
const REQUIRED: [&str; 12] = [
    "walcast_source_slot_lag_bytes",
    "walcast_source_retained_wal_bytes",
    "walcast_source_confirmed_lsn",
    "walcast_source_events_total",
    "walcast_publish_latency_seconds",
    "walcast_sink_applied_total",
    "walcast_sink_lag_records",
    "walcast_sink_apply_seconds",
    "walcast_sink_poison_total",
    "walcast_sink_freshness_seconds",
    "walcast_snapshot_rows_total",
    "walcast_part_up",
];

/// `GET {base}{path}` over HTTP/1.0: status code and body.
async fn get(base: &str, path: &str) -> (u16, String) {
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// Whether `text` lists `name`: a sample, or the family's `# TYPE` line (counters are typed
/// without their `_total` suffix).
fn lists(text: &str, name: &str) -> bool {
    let family = name.strip_suffix("_total").unwrap_or(name);
    text.lines().any(|line| {
        line.starts_with(&format!("{name}{{"))
            || line.starts_with(&format!("{name} "))
            || line.starts_with(&format!("# TYPE {family} "))
    })
}

/// The value of the sample that starts with `series` (name and labels), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Waits (60 s at most) for `/readyz` to answer 200; its body.
async fn ready_body(admin: &str) -> String {
    wait_for(
        Duration::from_secs(60),
        || format!("{admin}/readyz to answer 200"),
        || async move {
            let (status, body) = get(admin, "/readyz").await;
            (status == 200).then_some(body)
        },
    )
    .await
}

/// Ready means capturing: `/readyz` turns 200 only once the source streams from its slot,
/// so a write made the moment it does is published, even with `snapshot = "never"`. The
/// daemon is polled from the moment it is spawned, as a deploy script would.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_made_the_moment_readyz_turns_200_is_published() {
    let mut daemon = Daemon::prepare(
        "admin_ready",
        Setup {
            admin: true,
            ..Default::default()
        },
    )
    .await;
    let admin = daemon.admin.clone().unwrap();
    let pg = daemon.pg().await;
    daemon.spawn();
    let starting = wait_for(
        Duration::from_secs(60),
        || format!("/readyz to answer:\n{}", daemon.log_text()),
        || {
            let admin = admin.clone();
            async move {
                let address = admin.trim_start_matches("http://").to_string();
                tokio::net::TcpStream::connect(&address).await.ok()?;
                Some(get(&admin, "/readyz").await)
            }
        },
    )
    .await;
    // Bound before any part starts, the endpoint says "starting" until the slot streams.
    if starting.0 == 503 {
        assert!(starting.1.contains("\"starting\""), "{}", starting.1);
    }
    let _ = ready_body(&admin).await;
    pg.batch_execute(
        "INSERT INTO users (full_name, email, password_hash) VALUES ('Early', 'early@example.com', 'x')",
    )
    .await
    .unwrap();
    let events = crate::support::daemon::decode(&daemon.topic, 1).await;
    assert_eq!(events.len(), 1, "{}", daemon.log_text());
    let name = events[0].value.as_ref().map(|v| v["name"].clone());
    assert_eq!(name, Some(serde_json::json!("Early")), "{events:?}");
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
}

fn redis_sink(daemon: &Daemon) -> String {
    format!(
        "\n[[sink]]\nname = \"cache-{name}\"\ntype = \"redis\"\ntopics = [\"{topic}\"]\nurl = \"{url}\"\nkey_template = \"{name}:{{user_id}}\"\nbatch_max_wait_ms = 50\n",
        name = daemon.name,
        topic = daemon.topic,
        url = Stack::get().redis_url,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_healthz_and_metrics_follow_the_parts_and_the_data() {
    let mut daemon = Daemon::prepare(
        "admin_ep",
        Setup {
            admin: true,
            ..Default::default()
        },
    )
    .await;
    let admin = daemon.admin.clone().unwrap();
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    config.push_str(&redis_sink(&daemon));
    std::fs::write(&daemon.config, &config).unwrap();
    daemon.start().await;

    assert_eq!(get(&admin, "/healthz").await.0, 200);
    // The sink runs once it holds its partitions, which the group hands out in a moment.
    let body = ready_body(&admin).await;
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    let parts: Vec<(String, String)> = ready["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["part"].as_str().unwrap().to_string(),
                p["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        [
            (format!("source {}", daemon.name), "running".to_string()),
            (format!("sink cache-{}", daemon.name), "running".to_string()),
        ]
    );
    assert_eq!(get(&admin, "/nope").await.0, 404);

    let (status, metrics) = get(&admin, "/metrics").await;
    assert_eq!(status, 200);
    let missing: Vec<_> = REQUIRED
        .iter()
        .filter(|name| !lists(&metrics, name))
        .collect();
    assert!(missing.is_empty(), "missing {missing:?} in:\n{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    let source = format!("source=\"{}\"", daemon.name);
    let up = format!("walcast_part_up{{part=\"source {}\"}}", daemon.name);
    assert_eq!(sample(&metrics, &up), Some(1.0), "{metrics}");

    // An insert moves the source's event counter, the confirmed position and the sink's.
    let events = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("walcast_source_events_total{") && l.contains(&source))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = events(&metrics);
    let lsn_series = format!("walcast_source_confirmed_lsn{{{source}}}");
    let lsn_before = sample(&metrics, &lsn_series).unwrap_or(0.0);
    daemon
        .pg()
        .await
        .batch_execute("INSERT INTO users (full_name, email, password_hash) VALUES ('Ada', 'ada@example.com', 'x'), ('Grace', 'grace@example.com', 'x')")
        .await
        .unwrap();
    let applied = format!(
        "walcast_sink_applied_total{{sink=\"cache-{}\"}}",
        daemon.name
    );
    let freshness = format!(
        "walcast_sink_freshness_seconds{{sink=\"cache-{}\"}}",
        daemon.name
    );
    // From librdkafka's statistics, every 5 s.
    let lag = format!(
        "walcast_sink_lag_records{{sink=\"cache-{}\",topic=\"{}\",partition=\"",
        daemon.name, daemon.topic
    );
    let last = wait_for(
        Duration::from_secs(60),
        || format!("the counters to move:\n{}", daemon.log_text()),
        || {
            let admin = admin.clone();
            let (lsn_series, applied) = (lsn_series.clone(), applied.clone());
            let (freshness, lag) = (freshness.clone(), lag.clone());
            async move {
                let (_, text) = get(&admin, "/metrics").await;
                let moved = events(&text) >= before + 2.0
                    && sample(&text, &lsn_series).unwrap_or(0.0) > lsn_before
                    && sample(&text, &applied).unwrap_or(0.0) >= 2.0
                    && sample(&text, &freshness).unwrap_or(0.0) > 0.0
                    && text.lines().any(|l| l.starts_with(&lag));
                moved.then_some(text)
            }
        },
    )
    .await;
    assert_eq!(events(&last), before + 2.0, "{last}");
    // The replica is as fresh as the insert: seconds, not the age of the epoch.
    let fresh = sample(&last, &freshness).unwrap();
    assert!((0.0..60.0).contains(&fresh), "{last}");
    assert!(last.lines().any(|l| l.starts_with(&lag)), "{last}");
    assert!(
        last.contains(&format!(
            "walcast_source_events_total{{{source},topic=\"{}\",event=\"com.example.users.UserCreated\"}} 2",
            daemon.topic
        )),
        "{last}"
    );

    // A sink whose replica table is missing fails alone: 503, naming it and its error.
    assert_eq!(daemon.terminate().await, Some(0));
    let replica_db = Stack::get()
        .fresh_pg_database(&format!("{}_replica", daemon.name))
        .await;
    config.push_str(&format!(
        "\n[[sink]]\nname = \"broken-{name}\"\ntype = \"postgres\"\ntopics = [\"{topic}\"]\nurl = \"{url}\"\ntable = \"user_replica\"\nkey = [\"user_id\"]\nfields = [\"user_id\", \"name\"]\nbatch_max_wait_ms = 50\n",
        name = daemon.name,
        topic = daemon.topic,
        url = Stack::get().pg_url_for("postgres", &replica_db),
    ));
    std::fs::write(&daemon.config, &config).unwrap();
    daemon.start().await;
    let broken = format!("sink broken-{}", daemon.name);
    let body = wait_for(
        Duration::from_secs(60),
        || format!("/readyz to name {broken} failed:\n{}", daemon.log_text()),
        || {
            let (admin, broken) = (admin.clone(), broken.clone());
            async move {
                let (status, body) = get(&admin, "/readyz").await;
                let value: serde_json::Value = serde_json::from_str(&body).unwrap();
                let failed = value["parts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["part"] == broken.as_str() && p["state"] == "failed");
                failed.then(|| {
                    assert_eq!(status, 503, "{body}");
                    value
                })
            }
        },
    )
    .await;
    assert_eq!(body["ready"], false);
    let parts = body["parts"].as_array().unwrap();
    let failed = parts.iter().find(|p| p["part"] == broken.as_str()).unwrap();
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("user_replica"), "{error}");
    for other in parts.iter().filter(|p| p["part"] != broken.as_str()) {
        assert_eq!(other["state"], "running", "{body}");
        assert_eq!(other["error"], serde_json::Value::Null, "{body}");
    }
    let (_, metrics) = get(&admin, "/metrics").await;
    let down = format!("walcast_part_up{{part=\"{broken}\"}}");
    assert_eq!(sample(&metrics, &down), Some(0.0), "{metrics}");
    assert_eq!(get(&admin, "/healthz").await.0, 200);
    assert_eq!(daemon.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_address_in_use_stops_the_daemon_at_start_naming_the_key() {
    let daemon = Daemon::prepare(
        "admin_busy",
        Setup {
            admin: true,
            ..Default::default()
        },
    )
    .await;
    let address = daemon.admin.clone().unwrap().replace("http://", "");
    let _taken = std::net::TcpListener::bind(&address).unwrap();
    let (code, log) = daemon.run_to_end();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!("admin.listen = \"{address}\": cannot listen")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let mut daemon = Daemon::prepare(
        "admin_json",
        Setup {
            admin_keys: "log_format = \"json\"\n".into(),
            ..Default::default()
        },
    )
    .await;
    daemon.start().await;
    daemon
        .pg()
        .await
        .batch_execute(
            "INSERT INTO users (full_name, email, password_hash) VALUES ('Ada', 'ada@example.com', 'x')",
        )
        .await
        .unwrap();
    assert_eq!(daemon.terminate().await, Some(0));
    let log = daemon.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["source"] == daemon.name.as_str()),
        "no line names the source as a field:\n{log}"
    );
}
