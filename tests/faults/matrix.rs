//! Spec: each cell of the fault matrix (see the binary's docs). A cell is one server, one
//! fault and one hold; its name says all three.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::daemon::{Daemon, Setup};
use crate::support::proxy::{Fault, FaultProxy};
use crate::support::targets::OwnKafka;
use crate::support::workload::{assert_every_change_arrived, writer};
use crate::support::{free_port, wait_for, wait_until, Stack};

/// The server the proxy stands in front of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Postgres,
    Kafka,
    Registry,
    Redis,
}

/// What the proxy does while the fault holds.
#[derive(Debug, Clone, Copy)]
enum Injected {
    /// One of the proxy's faults, for the whole hold.
    Fault(Fault),
    /// Every connection reset, again every half second (a flapping path).
    Resets,
}

/// `host:port` of a URL such as `postgres://user@host:port` or `http://host:port`.
fn addr_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap().to_string()
}

/// `GET {base}/readyz` over HTTP/1.0: status and body.
async fn readyz(base: &str) -> Option<(u16, serde_json::Value)> {
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(format!("GET /readyz HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).ok()?))
}

/// One cell: `server` behind a proxy, `fault` brought mid-stream and held for `hold`.
async fn cell(name: &str, server: Server, fault: Injected, hold: Duration) {
    let stack = Stack::get();
    let target = match server {
        Server::Postgres => addr_of(&stack.pg_url),
        Server::Registry => addr_of(&stack.registry_url),
        Server::Redis => addr_of(&stack.redis_url),
        Server::Kafka => format!("127.0.0.1:{}", free_port()),
    };
    let proxy = FaultProxy::start(&target).await;
    let kafka = match server {
        Server::Kafka => {
            let client_port = target.rsplit_once(':').unwrap().1.parse().unwrap();
            Some(OwnKafka::start_behind(client_port, proxy.port()).await)
        }
        _ => None,
    };
    let mut daemon = Daemon::prepare(
        name,
        Setup {
            admin: true,
            pg_addr: (server == Server::Postgres).then(|| proxy.addr()),
            registry_url: (server == Server::Registry).then(|| format!("http://{}", proxy.addr())),
            brokers: kafka.as_ref().map(OwnKafka::brokers),
            ..Setup::default()
        },
    )
    .await;
    let redis_url = match server {
        Server::Redis => format!("redis://{}", proxy.addr()),
        _ => stack.redis_url.clone(),
    };
    let prefix = format!("{}:user:", daemon.name);
    let mut config = std::fs::read_to_string(&daemon.config).unwrap();
    config.push_str(&format!(
        "\n[[sink]]\nname = \"cache\"\ntype = \"redis\"\ntopics = [\"{}\"]\nurl = \"{redis_url}\"\nkey_template = \"{prefix}{{user_id}}\"\nfields = [\"name\"]\nbatch_max_wait_ms = 50\n",
        daemon.topic,
    ));
    std::fs::write(&daemon.config, config).unwrap();
    let admin = daemon.admin.clone().unwrap();
    daemon.start().await;
    wait_until(
        "every part to run before the fault",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            async move {
                readyz(&admin)
                    .await
                    .is_some_and(|(status, _)| status == 200)
            }
        },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (written, task) = writer(daemon.pg().await, stop.clone());
    let pg = daemon.pg().await;
    wait_until(
        "writes to flow before the fault",
        Duration::from_secs(30),
        || {
            let written = written.clone();
            async move { written.lock().unwrap().len() >= 20 }
        },
    )
    .await;

    // The fault, held; while it holds, a path to Kafka that carries nothing back means
    // nothing written from now on can be confirmed to PostgreSQL.
    match fault {
        Injected::Fault(f) => proxy.set(f),
        Injected::Resets => proxy.reset(),
    }
    // Read once the fault holds: whatever reached Kafka before it was written before this.
    let at_fault: String = pg
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let kafka_blocked = server == Server::Kafka
        && matches!(
            fault,
            Injected::Fault(Fault::Stall | Fault::CutToServer | Fault::CutToClient)
        );
    let written_at_fault = written.lock().unwrap().len();
    let held = tokio::time::Instant::now();
    while held.elapsed() < hold {
        if let Injected::Resets = fault {
            proxy.reset();
        }
        if kafka_blocked {
            let row = pg
                .query_one(
                    "SELECT confirmed_flush_lsn <= $1::text::pg_lsn, confirmed_flush_lsn::text \
                     FROM pg_replication_slots WHERE slot_name = $2",
                    &[&at_fault, &daemon.name],
                )
                .await
                .unwrap();
            let (within, at): (bool, String) = (row.get(0), row.get(1));
            assert!(
                within,
                "the slot was confirmed to {at}, past {at_fault} where Kafka stopped taking writes"
            );
        }
        assert!(
            daemon.exited().is_none(),
            "the daemon exited during the fault:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if server != Server::Postgres {
        assert!(
            written.lock().unwrap().len() > written_at_fault,
            "the source database took no writes during the fault"
        );
    }
    proxy.heal();

    // Healed: every part recovers by itself, and the replica catches up with the source.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let users: i64 = pg
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    let redis = ::redis::Client::open(stack.redis_url.as_str()).unwrap();
    let cache = redis.get_multiplexed_async_connection().await.unwrap();
    let log = daemon.log.clone();
    wait_for(
        Duration::from_secs(180),
        || {
            format!(
                "the Redis replica to hold all {users} users after the heal; the daemon's log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        },
        || {
            let (mut cache, prefix) = (cache.clone(), &prefix);
            async move {
                let keys: Vec<String> = ::redis::cmd("KEYS")
                    .arg(format!("{prefix}*"))
                    .query_async(&mut cache)
                    .await
                    .unwrap();
                (keys.len() as i64 == users).then_some(())
            }
        },
    )
    .await;
    wait_until(
        "every part to run again after the heal",
        Duration::from_secs(120),
        || {
            let admin = admin.clone();
            async move {
                readyz(&admin)
                    .await
                    .is_some_and(|(status, _)| status == 200)
            }
        },
    )
    .await;
    crate::support::wait_confirmed_to_now(&pg, &daemon.name).await;
    assert!(daemon.exited().is_none(), "{}", daemon.log_text());
    assert_every_change_arrived(&daemon, &written).await;
    assert_eq!(daemon.terminate().await, Some(0), "{}", daemon.log_text());
    drop(kafka);
}

/// The matrix's cells: `server`, fault, hold.
macro_rules! cells {
    ($($name:ident: $server:ident, $fault:expr, $secs:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            cell(stringify!($name), Server::$server, $fault, Duration::from_secs($secs)).await;
        }
    )*};
}

const LATENCY: Injected = Injected::Fault(Fault::Latency(Duration::from_millis(200)));
const STALL: Injected = Injected::Fault(Fault::Stall);
const CUT_TO_SERVER: Injected = Injected::Fault(Fault::CutToServer);
const CUT_TO_CLIENT: Injected = Injected::Fault(Fault::CutToClient);
const RESETS: Injected = Injected::Resets;

cells! {
    postgres_latency_5_s: Postgres, LATENCY, 5;
    postgres_stall_5_s: Postgres, STALL, 5;
    postgres_resets_5_s: Postgres, RESETS, 5;
    postgres_cut_to_server_5_s: Postgres, CUT_TO_SERVER, 5;
    postgres_cut_to_client_5_s: Postgres, CUT_TO_CLIENT, 5;
    kafka_latency_5_s: Kafka, LATENCY, 5;
    kafka_stall_5_s: Kafka, STALL, 5;
    kafka_resets_5_s: Kafka, RESETS, 5;
    kafka_cut_to_server_5_s: Kafka, CUT_TO_SERVER, 5;
    kafka_cut_to_client_5_s: Kafka, CUT_TO_CLIENT, 5;
    registry_latency_5_s: Registry, LATENCY, 5;
    registry_stall_5_s: Registry, STALL, 5;
    registry_resets_5_s: Registry, RESETS, 5;
    registry_cut_to_server_5_s: Registry, CUT_TO_SERVER, 5;
    registry_cut_to_client_5_s: Registry, CUT_TO_CLIENT, 5;
    redis_latency_5_s: Redis, LATENCY, 5;
    redis_stall_5_s: Redis, STALL, 5;
    redis_resets_5_s: Redis, RESETS, 5;
    redis_cut_to_server_5_s: Redis, CUT_TO_SERVER, 5;
    redis_cut_to_client_5_s: Redis, CUT_TO_CLIENT, 5;
}
