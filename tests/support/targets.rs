//! Servers a spec stops and restarts, so the stack's own stay up for the tests running
//! beside it: a PostgreSQL cluster, a Redis server and an Apache Kafka broker of the test's
//! own, and the machine's MariaDB, restarted in place.

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

/// A PostgreSQL cluster of the test's own, run as the postgres user: of the major the run
/// tests (`WALCAST_TEST_PG`, 15 by default), or of the one [`OwnPostgres::start_major`] names.
pub struct OwnPostgres {
    pub port: u16,
    pub data: PathBuf,
    pub bin: PathBuf,
    /// The cluster's major (15 to 18).
    pub major: u32,
}

/// Adds `conf` to the cluster's postgresql.conf.
fn append_conf(data: &std::path::Path, conf: &str) {
    if conf.is_empty() {
        return;
    }
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap();
    writeln!(file, "{conf}").unwrap();
}

impl OwnPostgres {
    pub async fn start(name: &str) -> OwnPostgres {
        Self::start_major(name, Stack::get().pg_major).await
    }

    /// A cluster of PostgreSQL `major` (15 to 18).
    pub async fn start_major(name: &str, major: u32) -> OwnPostgres {
        Self::start_major_with(name, major, "").await
    }

    /// A cluster of PostgreSQL `major` with `conf` (lines of postgresql.conf) added.
    pub async fn start_major_with(name: &str, major: u32, conf: &str) -> OwnPostgres {
        let bin = Stack::get().pg_of(major).server_bin.clone();
        let data = PathBuf::from(format!("/var/tmp/walcast-stack/targets/{name}"));
        let _ = std::fs::remove_dir_all(&data);
        run(Command::new("install")
            .args(["-d", "-o", "postgres", "-g", "postgres", "-m", "700"])
            .arg(&data));
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args([
                // A test's cluster need not survive a machine crash: skip the fsyncs.
                "--no-sync",
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-D",
            ])
            .arg(&data));
        append_conf(&data, conf);
        let pg = OwnPostgres {
            port: free_port(),
            data,
            bin,
            major,
        };
        pg.pg_ctl_start().await;
        pg
    }

    /// A cluster of PostgreSQL `major` that logical replication can read, and a physical
    /// standby can follow (`wal_level = logical`).
    /// [`OwnPostgres::start_major_with`], the settings given as `(key, value)` pairs.
    pub async fn start_major_settings(
        name: &str,
        major: u32,
        settings: &[(&str, &str)],
    ) -> OwnPostgres {
        let conf: String = settings
            .iter()
            .map(|(key, value)| format!("{key} = '{value}'\n"))
            .collect();
        Self::start_major_with(name, major, &conf).await
    }

    pub async fn start_logical(name: &str, major: u32) -> OwnPostgres {
        Self::start_major_with(
            name,
            major,
            "wal_level = logical\nmax_wal_senders = 20\nmax_replication_slots = 20\n",
        )
        .await
    }

    /// A hot standby of `primary` (which must be logical: [`OwnPostgres::start_logical`]),
    /// made by copying the primary's cleanly stopped data directory. It streams from a
    /// physical slot on the primary named `name` (also its `application_name` there), with
    /// `hot_standby_feedback = on`; from 17 on, with `sync_replication_slots = on`, and the
    /// primary waits for it before sending logical changes (`synchronized_standby_slots`).
    /// Returns once the standby streams.
    pub async fn standby_of(primary: &OwnPostgres, name: &str) -> OwnPostgres {
        let admin = primary.client("postgres").await;
        admin
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[&name],
            )
            .await
            .unwrap();
        drop(admin);
        primary.pg_ctl("fast");
        let data = PathBuf::from(format!("/var/tmp/walcast-stack/targets/{name}"));
        let _ = std::fs::remove_dir_all(&data);
        run(Command::new("install")
            .args(["-d", "-o", "postgres", "-g", "postgres", "-m", "700"])
            .arg(&data));
        run(Command::new("runuser")
            .args(["-u", "postgres", "--", "cp", "-a"])
            .arg(primary.data.join("."))
            .arg(&data));
        primary.pg_ctl_start().await;
        // The copy's slots are the primary's, not the standby's own.
        for slot in std::fs::read_dir(data.join("pg_replslot")).unwrap() {
            std::fs::remove_dir_all(slot.unwrap().path()).unwrap();
        }
        let _ = std::fs::remove_file(data.join("log"));
        run(Command::new("runuser")
            .args(["-u", "postgres", "--", "touch"])
            .arg(data.join("standby.signal")));
        let mut conf = format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres dbname=postgres application_name={name}'\n\
             primary_slot_name = '{name}'\nhot_standby = on\nhot_standby_feedback = on\n",
            primary.port
        );
        if primary.major >= 17 {
            conf.push_str("sync_replication_slots = on\n");
        }
        append_conf(&data, &conf);
        let standby = OwnPostgres {
            port: free_port(),
            data,
            bin: primary.bin.clone(),
            major: primary.major,
        };
        standby.pg_ctl_start().await;
        let admin = primary.client("postgres").await;
        if primary.major >= 17 {
            for sql in [
                format!("ALTER SYSTEM SET synchronized_standby_slots = '{name}'"),
                "SELECT pg_reload_conf()".to_string(),
            ] {
                admin.batch_execute(&sql).await.unwrap();
            }
        }
        wait_until(
            &format!("standby {name} to stream from the primary"),
            Duration::from_secs(60),
            || {
                let admin = &admin;
                async move {
                    admin
                        .query_opt(
                            "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
                            &[&name],
                        )
                        .await
                        .unwrap()
                        .is_some()
                }
            },
        )
        .await;
        standby
    }

    /// Waits until this standby has replayed everything `primary` has written so far
    /// (a database created there, for one, exists here).
    pub async fn replayed(&self, primary: &OwnPostgres) {
        let end: String = primary
            .client("postgres")
            .await
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let standby = self.client("postgres").await;
        wait_until(
            &format!("the standby to replay the primary's WAL up to {end}"),
            Duration::from_secs(30),
            || {
                let (standby, end) = (&standby, &end);
                async move {
                    standby
                        .query_one(
                            "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                            &[end],
                        )
                        .await
                        .unwrap()
                        .get::<_, bool>(0)
                }
            },
        )
        .await;
    }

    /// Promotes a standby and waits until it takes writes.
    pub async fn promote(&self) {
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "promote"])
            .stdout(Stdio::null()));
        let client = self.client("postgres").await;
        wait_until(
            "the promoted standby to take writes",
            Duration::from_secs(60),
            || {
                let client = &client;
                async move {
                    !client
                        .query_one("SELECT pg_is_in_recovery()", &[])
                        .await
                        .unwrap()
                        .get::<_, bool>(0)
                }
            },
        )
        .await;
    }

    /// SIGKILL to the postmaster: the server dies without a shutdown checkpoint, and its
    /// port refuses connections at once (its backends exit as they notice).
    pub fn kill9(&self) {
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_string();
        run(Command::new("kill").args(["-9", &pid]));
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

    /// Stops the server cleanly (fast shutdown), e.g. to copy its data directory.
    pub fn stop(&self) {
        self.pg_ctl("fast");
    }

    /// Starts the server again after [`OwnPostgres::stop`].
    pub async fn start_again(&self) {
        self.pg_ctl_start().await;
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
            // A server killed by kill9 has nothing left to stop.
            .stderr(Stdio::null())
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

/// An Apache Kafka broker of the test's own (one KRaft node, the stack's classpath), on
/// free loopback ports, storing in a temporary directory. [`OwnKafka::kill9`] and
/// [`OwnKafka::start_again`] stop it without warning and bring it back with its data.
pub struct OwnKafka {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnKafka {
    /// A broker that creates no topic on its own, like the stack's.
    pub async fn start() -> OwnKafka {
        Self::start_with(false).await
    }

    /// With `auto_create`, the broker creates a topic the first time a client names it (with
    /// one partition), as Kafka does by default.
    pub async fn start_with(auto_create: bool) -> OwnKafka {
        Self::start_configured(auto_create, None).await
    }

    /// A broker whose clients reach it through `proxy` (a [`super::proxy::FaultProxy`] to
    /// [`OwnKafka::client_port`]): its metadata sends them back to the proxy, while the
    /// broker's own traffic takes a listener of its own, so a fault cuts the clients only.
    pub async fn start_behind(client_port: u16, proxy_port: u16) -> OwnKafka {
        Self::start_configured(false, Some((client_port, proxy_port))).await
    }

    async fn start_configured(auto_create: bool, proxied: Option<(u16, u16)>) -> OwnKafka {
        let stack = Stack::get();
        let dir = tempfile::tempdir().unwrap();
        let controller = free_port();
        let data = dir.path().join("data");
        let (port, listeners) = match proxied {
            None => {
                let port = free_port();
                (
                    port,
                    format!(
                        "listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                         advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                         inter.broker.listener.name=PLAINTEXT\n\
                         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
                    ),
                )
            }
            Some((client, proxy)) => {
                let internal = free_port();
                (
                    proxy,
                    format!(
                        "listeners=INTERNAL://127.0.0.1:{internal},EXTERNAL://127.0.0.1:{client},CONTROLLER://127.0.0.1:{controller}\n\
                         advertised.listeners=INTERNAL://127.0.0.1:{internal},EXTERNAL://127.0.0.1:{proxy}\n\
                         inter.broker.listener.name=INTERNAL\n\
                         listener.security.protocol.map=INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
                    ),
                )
            }
        };
        std::fs::write(
            dir.path().join("server.properties"),
            format!(
                "process.roles=broker,controller\nnode.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 {listeners}controller.listener.names=CONTROLLER\n\
                 log.dirs={}\noffsets.topic.replication.factor=1\n\
                 transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
                 share.coordinator.state.topic.replication.factor=1\n\
                 share.coordinator.state.topic.min.isr=1\ngroup.initial.rebalance.delay.ms=0\n\
                 auto.create.topics.enable={auto_create}\n",
                data.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("log4j2.properties"),
            "status = warn\nappender.out.type = Console\nappender.out.name = out\n\
             appender.out.layout.type = PatternLayout\nappender.out.layout.pattern = [%d] %p %m (%c)%n\n\
             rootLogger.level = warn\nrootLogger.appenderRef.out.ref = out\n",
        )
        .unwrap();
        let mut kafka = OwnKafka {
            port,
            dir,
            child: None,
        };
        let uuid = kafka
            .java()
            .arg("kafka.tools.StorageTool")
            .arg("random-uuid")
            .output()
            .unwrap();
        let uuid = String::from_utf8_lossy(&uuid.stdout)
            .trim()
            .lines()
            .last()
            .unwrap()
            .to_string();
        run(kafka
            .java()
            .args(["kafka.tools.StorageTool", "format", "-t", &uuid, "-c"])
            .arg(kafka.dir.path().join("server.properties")));
        assert!(stack.kafka_libs.is_dir());
        kafka.start_again().await;
        kafka
    }

    fn java(&self) -> Command {
        let mut cmd = Command::new("java");
        cmd.args(["-Xms256m", "-Xmx256m", "-XX:+UseSerialGC", "-cp"])
            .arg(format!("{}/*", Stack::get().kafka_libs.display()))
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.path().join("log4j2.properties").display()
            ));
        cmd
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker on its data and waits until it serves metadata.
    pub async fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kafka.log"))
            .unwrap();
        let child = self
            .java()
            .arg("kafka.Kafka")
            .arg(self.dir.path().join("server.properties"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let brokers = self.brokers();
        wait_until("the test's Kafka broker", Duration::from_secs(90), || {
            let brokers = brokers.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    use rdkafka::consumer::{BaseConsumer, Consumer};
                    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                        .set("bootstrap.servers", &brokers)
                        .create()
                        .unwrap();
                    consumer
                        .fetch_metadata(None, Duration::from_secs(2))
                        .is_ok_and(|m| !m.brokers().is_empty())
                })
                .await
                .unwrap()
            }
        })
        .await;
    }

    /// SIGKILL: the broker stops without warning; its data stays.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The certificate and key the TLS servers a test starts present: the stack's, for
/// 127.0.0.1 and localhost, signed by the stack's Kafka CA (`Stack::kafka_sasl.ca`), copied
/// into `dir` so the server's user can read them.
fn server_tls_files(dir: &std::path::Path, owner: &str) -> (PathBuf, PathBuf, PathBuf) {
    let sasl = &Stack::get().kafka_sasl;
    let copy = |from: &PathBuf, name: &str| {
        let to = dir.join(name);
        std::fs::copy(from, &to).unwrap();
        to
    };
    let files = (
        copy(&sasl.server_cert, "server.crt"),
        copy(&sasl.server_key, "server.key"),
        copy(&sasl.ca, "ca.crt"),
    );
    run(Command::new("chown")
        .args(["-R", &format!("{owner}:{owner}")])
        .arg(dir));
    files
}

/// A Redis server of the test's own that speaks only TLS (the stack's server certificate)
/// and lets in only the ACL user `user` with `password`.
pub struct OwnTlsRedis {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl OwnTlsRedis {
    pub async fn start(user: &str, password: &str) -> OwnTlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = server_tls_files(dir.path(), "root");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .args(["--tls-auth-clients", "no", "--user", "default", "off"])
            .args([
                "--user",
                user,
                "on",
                &format!(">{password}"),
                "~*",
                "&*",
                "+@all",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(
            "the test's TLS Redis",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        OwnTlsRedis {
            port,
            child,
            _dir: dir,
        }
    }

    /// The keys matching `pattern`, read over TLS with redis-cli.
    pub fn keys(&self, user: &str, password: &str, pattern: &str) -> Vec<String> {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&Stack::get().kafka_sasl.ca)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "--user",
                user,
                "--pass",
                password,
                "--no-auth-warning",
                "--raw",
            ])
            .args(["KEYS", pattern])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for OwnTlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A MariaDB server of the test's own (its own data directory, port and socket), with TLS
/// turned on (the stack's server certificate) or not, so the machine's MariaDB is left alone.
pub struct OwnMariadb {
    pub port: u16,
    pub tls: bool,
    dir: tempfile::TempDir,
    child: Child,
}

impl OwnMariadb {
    pub async fn start_tls() -> OwnMariadb {
        Self::start(true).await
    }

    pub async fn start(tls: bool) -> OwnMariadb {
        let dir = tempfile::Builder::new()
            .prefix("walcast-mariadb")
            .tempdir_in("/var/tmp")
            .unwrap();
        server_tls_files(dir.path(), "mysql");
        // Temporary tables in a directory of its own: servers bootstrapping side by side
        // in /tmp have been seen to lose each other's files there.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        run(Command::new("chown").arg("mysql:mysql").arg(&tmp));
        run(Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args([
                "--user=mysql",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ])
            .stdout(Stdio::null()));
        let port = free_port();
        let child = Self::spawn(dir.path(), port, tls);
        let db = OwnMariadb {
            port,
            tls,
            dir,
            child,
        };
        db.answers().await;
        db
    }

    /// Starts the server on its data directory (made by `start`).
    fn spawn(dir: &std::path::Path, port: u16, tls: bool) -> Child {
        let file = |name: &str| dir.join(name).display().to_string();
        Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", file("data")))
            .arg(format!("--tmpdir={}", file("tmp")))
            .args(["--user=mysql", "--bind-address=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", file("sock")))
            .arg(format!("--pid-file={}", file("pid")))
            .arg(format!("--log-error={}", file("error.log")))
            .args(
                tls.then(|| {
                    [
                        format!("--ssl-cert={}", file("server.crt")),
                        format!("--ssl-key={}", file("server.key")),
                        format!("--ssl-ca={}", file("ca.crt")),
                    ]
                })
                .into_iter()
                .flatten(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    async fn answers(&self) {
        wait_until("the test's MariaDB", Duration::from_secs(60), || async {
            self.client()
                .arg("-e")
                .arg("SELECT 1")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .await;
    }

    /// Kills the server (kill -9, as a crash) and starts it again on its data.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.dir.path(), self.port, self.tls);
        self.answers().await;
    }

    /// A new database `db` and a user of its own over TCP: its URL, password included.
    pub fn fresh_database(&self, db: &str) -> String {
        self.sql(&format!(
            "CREATE DATABASE {db}; CREATE USER '{db}'@'%' IDENTIFIED BY 'pw-{db}'; \
             GRANT ALL ON {db}.* TO '{db}'@'%';"
        ));
        format!("mysql://{db}:pw-{db}@127.0.0.1:{}/{db}", self.port)
    }

    fn client(&self) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .args(["-uroot", "--batch", "--skip-column-names"]);
        cmd
    }

    /// Runs `sql` as root over the server's socket; returns what it printed.
    pub fn sql(&self, sql: &str) -> String {
        let out = self.client().arg("-e").arg(sql).output().unwrap();
        assert!(out.status.success(), "{sql}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for OwnMariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
