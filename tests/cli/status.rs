//! Spec: `walcast status` reads the servers themselves, so it reports with or without the
//! daemon: one line per source (slot, active or not, confirmed position, lag, retained WAL)
//! and per sink (group, lag per topic, last applied commit time), `--json` for machines,
//! and exit 0 when everything could be read.

use std::process::Command;
use std::time::Duration;

use crate::support::daemon::{Daemon, Setup};
use crate::support::{unique, wait_for, Stack};

fn status(config: &std::path::Path, json: bool) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walcast"));
    cmd.args(["status", "--config"]).arg(config);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_slots_and_sink_groups_with_or_without_the_daemon() {
    let stack = Stack::get();
    let mut daemon = Daemon::prepare("st_status", Setup::default()).await;
    let sink = unique("st_cache");
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    config.push_str(&format!(
        "\n[[sink]]\nname = \"{sink}\"\ntype = \"redis\"\ntopics = [\"{topic}\"]\nurl = \"{url}\"\nkey_template = \"{sink}:{{user_id}}\"\nbatch_max_wait_ms = 50\n",
        topic = daemon.topic,
        url = stack.redis_url,
    ));
    std::fs::write(&daemon.config, config).unwrap();
    daemon.start().await;
    daemon
        .pg()
        .await
        .batch_execute("INSERT INTO users (full_name, email, password_hash) VALUES ('Ada', 'ada@example.com', 'x'), ('Grace', 'grace@example.com', 'x')")
        .await
        .unwrap();

    // Once the sink applied both, its group has no lag and a last applied commit time.
    let json: serde_json::Value = wait_for(
        Duration::from_secs(60),
        || format!("the sink to apply both rows\n{}", daemon.log_text()),
        || {
            let (code, out, _) = status(&daemon.config, true);
            async move {
                let json: serde_json::Value = serde_json::from_str(&out).ok()?;
                let sink = &json["sinks"][0];
                (code == Some(0)
                    && sink["lag"][0]["records"] == 0
                    && sink["last_applied_commit_ts"].is_i64())
                .then_some(json)
            }
        },
    )
    .await;
    let source = &json["sources"][0];
    assert_eq!(source["name"], daemon.name.as_str());
    assert_eq!(source["slot"], daemon.name.as_str());
    assert_eq!(source["active"], true);
    assert!(source["lag_bytes"].is_u64() && source["retained_wal_bytes"].is_u64());
    assert_eq!(
        json["sinks"][0]["group"],
        format!("walcast.{sink}").as_str()
    );

    let (code, text, stderr) = status(&daemon.config, false);
    assert_eq!(code, Some(0), "{stderr}");
    let source_line = text
        .lines()
        .find(|l| l.starts_with(&format!("source {}", daemon.name)))
        .unwrap_or_else(|| panic!("no source line:\n{text}"));
    assert!(source_line.contains(" active "), "{source_line}");
    assert!(source_line.contains(" lag "), "{source_line}");
    assert!(source_line.contains(" retained WAL "), "{source_line}");
    let sink_line = text
        .lines()
        .find(|l| l.starts_with(&format!("sink   {sink}")))
        .unwrap_or_else(|| panic!("no sink line:\n{text}"));
    assert!(
        sink_line.contains(&format!("{} lag 0 (3 partitions)", daemon.topic)),
        "{sink_line}"
    );
    assert!(sink_line.contains("last applied commit "), "{sink_line}");

    // Without the daemon, the servers still answer: the slot is inactive.
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    let (code, text, stderr) = status(&daemon.config, false);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("source {}", daemon.name)) && l.contains(" inactive ")),
        "{text}"
    );
}
