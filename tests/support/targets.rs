//! Replica stores a spec restarts: a PostgreSQL cluster and a Redis server of the test's
//! own (the stack's PostgreSQL also stores the broker's data, so it cannot be restarted
//! under a running test), and the machine's MariaDB, restarted in place.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until, Stack};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL 15 cluster of the test's own, run as the postgres user.
pub struct OwnPostgres {
    pub port: u16,
    data: PathBuf,
    bin: PathBuf,
}

impl OwnPostgres {
    pub async fn start(name: &str) -> OwnPostgres {
        let bin = Stack::get().pg_bin.clone();
        let data = PathBuf::from(format!("/var/tmp/walcast-stack/targets/{name}"));
        let _ = std::fs::remove_dir_all(&data);
        run(Command::new("install")
            .args(["-d", "-o", "postgres", "-g", "postgres", "-m", "700"])
            .arg(&data));
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-D",
            ])
            .arg(&data));
        let pg = OwnPostgres {
            port: free_port(),
            data,
            bin,
        };
        pg.pg_ctl_start().await;
        pg
    }

    async fn pg_ctl_start(&self) {
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                self.port,
                self.data.display()
            ))
            .arg("start")
            .stdout(Stdio::null()));
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub async fn client(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// Stops the server the way a crash does (immediate shutdown), then starts it again.
    pub async fn restart(&self) {
        self.pg_ctl("immediate");
        self.pg_ctl_start().await;
    }

    fn pg_ctl(&self, mode: &str) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "stop"])
            .stdout(Stdio::null())
            .status();
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.pg_ctl("fast");
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// A Redis server of the test's own that keeps nothing on disk: a restart loses its data.
pub struct OwnRedis {
    pub port: u16,
    child: Child,
}

impl OwnRedis {
    pub async fn start() -> OwnRedis {
        let port = free_port();
        let child = Self::spawn(port).await;
        OwnRedis { port, child }
    }

    async fn spawn(port: u16) -> Child {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--port",
            ])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("redis://127.0.0.1:{port}");
        wait_until("the test's Redis", Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url.as_str()) else {
                    return false;
                };
                client.get_multiplexed_async_connection().await.is_ok()
            }
        })
        .await;
        child
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts an empty one on the same port.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port).await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Restarts the machine's MariaDB (as `scripts/stack` starts it) and waits until it answers.
pub async fn restart_machine_mariadb() {
    run(Command::new("mariadb-admin").arg("shutdown"));
    run(Command::new("install").args(["-d", "-o", "mysql", "-g", "mysql", "/run/mysqld"]));
    run(Command::new("start-stop-daemon").args([
        "--start",
        "--oknodo",
        "--background",
        "--exec",
        "/usr/sbin/mariadbd",
    ]));
    wait_until(
        "MariaDB after its restart",
        Duration::from_secs(60),
        || async {
            Command::new("mariadb-admin")
                .arg("ping")
                .output()
                .is_ok_and(|o| o.status.success())
        },
    )
    .await;
}
