//! Spec: `walcast slot drop` is the one way walcast drops a slot, and it refuses an active one.

use std::process::Output;

use crate::support::{source_settings, unique, RunningSource, Stack};

fn slot_drop(config: &std::path::Path) -> (Option<i32>, String, String) {
    let out: Output = std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["slot", "drop", "--source", "users", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn slot_drop_drops_an_idle_slot_and_refuses_an_active_one() {
    let stack = Stack::get();
    let name = unique("slot_drop");
    let db = stack.fresh_pg_database(&name).await;
    let pg = stack.pg(&db).await;
    pg.batch_execute(&format!(
        "CREATE TABLE users (id int PRIMARY KEY); ALTER TABLE users OWNER TO walcast;
         GRANT CREATE ON DATABASE {name} TO walcast;"
    ))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("walcast.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
brokers = "{brokers}"
[registry]
url = "http://127.0.0.1:8081"
[[source]]
name = "users"
url = "{url}"
slot = "{name}"
[[source.table]]
table = "users"
topic = "users"
key = "{root}/schemas/users/UserKey.avsc"
insert = "{root}/schemas/users/UserCreated.avsc"
"#,
            brokers = stack.kafka_brokers,
            url = stack.pg_url_for("walcast", &db),
            root = env!("CARGO_MANIFEST_DIR"),
        ),
    )
    .unwrap();

    let source = RunningSource::start_streaming(
        stack,
        &db,
        source_settings(stack, &name, &db, &["public.users"]),
    )
    .await;
    let (code, _, stderr) = slot_drop(&config);
    assert_eq!(code, Some(1));
    assert!(
        stderr.starts_with(&format!(
            "walcast: source users: replication slot {name} is active for PID "
        )),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(
            "; it was not dropped\n  hint: stop the walcast (or client) streaming from it first\n"
        ),
        "{stderr}"
    );
    source.stop().await.unwrap();

    let (code, stdout, stderr) = slot_drop(&config);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "dropped replication slot {name} of source users (it had confirmed "
        )),
        "{stdout}"
    );
    let left: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);

    let (code, _, stderr) = slot_drop(&config);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        format!(
            "walcast: source users: there is no replication slot {name}; nothing was dropped\n"
        )
    );
}
