//! TLS to Postgres against real servers: private clusters with `ssl = on` and a server
//! certificate from a CA this test makes, and the machine's server (TLS off).
//!
//! Every connection is opened the way pgcable opens them (`db::open`, the pool, the listener,
//! the `check` and `triggers` commands), so what passes here is what a deployment gets.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgcable::dev::Cluster;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use uuid::Uuid;

use common::{campaign_channel, delivery, token, Cable, SECRET};

/// The server certificate names only this host (so `127.0.0.1` is a name mismatch).
const CERT_HOST: &str = "localhost";

/// A CA and a server certificate it signed, plus a CA that signed nothing of ours.
struct Pki {
    ca_pem: String,
    other_ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("self-signed CA");
    (params, key, cert.pem())
}

fn pki() -> Pki {
    let (ca_params, ca_key, ca_pem) = ca("pgcable test CA");
    let (_, _, other_ca_pem) = ca("some other CA");
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec![CERT_HOST.to_string()]).expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, CERT_HOST);
    let server = params
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    Pki {
        ca_pem,
        other_ca_pem,
        server_cert_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

/// A private cluster with `ssl = on`, removed (with the client's CA files) on drop.
struct TlsCluster {
    cluster: Option<Cluster>,
    /// Where the client's CA files are.
    dir: PathBuf,
    port: u16,
}

impl TlsCluster {
    /// Starts a cluster serving TLS with a fresh PKI; `hba` replaces pg_hba.conf if given.
    async fn start(hba: Option<&str>) -> TlsCluster {
        TlsCluster::start_with(hba, true).await
    }

    /// A cluster with `ssl = off`.
    async fn without_tls() -> TlsCluster {
        TlsCluster::start_with(None, false).await
    }

    async fn start_with(hba: Option<&str>, ssl: bool) -> TlsCluster {
        let pki = pki();
        let dir = std::env::temp_dir().join(format!("pgcable-tls-{}", Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).expect("temp dir");
        std::fs::write(dir.join("ca.pem"), &pki.ca_pem).expect("write ca.pem");
        std::fs::write(dir.join("other-ca.pem"), &pki.other_ca_pem).expect("write other-ca.pem");

        let cluster = Cluster::from_machine().expect("PostgreSQL server binaries");
        let port = cluster
            .url()
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("port in the cluster's URL");
        let me = TlsCluster {
            cluster: Some(cluster),
            dir,
            port,
        };
        let cluster = me.cluster();
        cluster.init().await.expect("initdb");
        cluster
            .write_file("server.crt", pki.server_cert_pem.as_bytes())
            .expect("server.crt");
        cluster
            .write_file("server.key", pki.server_key_pem.as_bytes())
            .expect("server.key");
        let settings = if ssl {
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
        } else {
            "ssl = off\n"
        };
        cluster.configure(settings).expect("ssl settings");
        if let Some(hba) = hba {
            cluster
                .write_file("pg_hba.conf", hba.as_bytes())
                .expect("pg_hba.conf");
        }
        cluster.start_server().await.expect("TLS cluster starts");
        me
    }

    fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("cluster")
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// `postgres://postgres@<host>:<port>/<db>?<params>`.
    fn url(&self, host: &str, params: &str) -> String {
        self.url_db(host, "postgres", params)
    }

    fn url_db(&self, host: &str, db: &str, params: &str) -> String {
        let base = format!("postgres://postgres@{host}:{}/{db}", self.port);
        if params.is_empty() {
            base
        } else {
            format!("{base}?{params}")
        }
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(cluster) = self.cluster.take() {
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(cluster.remove());
                }
            })
            .join();
        }
    }
}

fn param(path: &Path) -> String {
    path.display().to_string()
}

/// Connects the way pgcable does; `Ok(encrypted)` after a query went through.
async fn try_connect(url: &str) -> Result<bool, String> {
    let opened = pgcable::db::open(url, "pgcable-tls-test", Duration::from_secs(15)).await?;
    let connection = opened.connection;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let row = opened
        .client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| pgcable::db::error_text(&e))?;
    let server_sees_tls: bool = row.get(0);
    assert_eq!(
        server_sees_tls, opened.encrypted,
        "the client's record of TLS agrees with pg_stat_ssl for {url}"
    );
    Ok(opened.encrypted)
}

async fn works(url: &str) -> bool {
    match try_connect(url).await {
        Ok(encrypted) => encrypted,
        Err(e) => panic!("{url} should connect, got: {e}"),
    }
}

async fn fails(url: &str) -> String {
    match try_connect(url).await {
        Ok(_) => panic!("{url} should not connect"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn sslmodes_against_a_server_with_tls() {
    let tc = TlsCluster::start(None).await;
    let ca = param(&tc.ca());
    let other = param(&tc.other_ca());

    // require and prefer encrypt without checking anything; disable does not encrypt.
    assert!(works(&tc.url("127.0.0.1", "sslmode=require")).await);
    assert!(
        works(&tc.url("127.0.0.1", "")).await,
        "prefer is the default and uses TLS when offered"
    );
    assert!(works(&tc.url("127.0.0.1", "sslmode=prefer")).await);
    assert!(!works(&tc.url("127.0.0.1", "sslmode=disable")).await);

    // verify-full with the CA that signed the certificate, by the name on it.
    assert!(works(&tc.url(CERT_HOST, &format!("sslmode=verify-full&sslrootcert={ca}"))).await);
    // The same in key=value form.
    let kv = format!(
        "host={CERT_HOST} port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{ca}'",
        tc.port
    );
    assert!(works(&kv).await);

    // verify-full by an address the certificate does not name: the name check fails.
    let e = fails(&tc.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(
        e.contains("TLS") && e.contains("does not name the host"),
        "{e}"
    );
    assert!(e.contains("127.0.0.1"), "names the host it expected: {e}");
    // verify-ca checks the chain only, so the address is fine.
    assert!(works(&tc.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"))).await);

    // Another CA: the chain check fails, whatever the mode that checks it.
    for params in [
        format!("sslmode=verify-full&sslrootcert={other}"),
        format!("sslmode=verify-ca&sslrootcert={other}"),
        // libpq: require with a CA file checks the chain like verify-ca.
        format!("sslmode=require&sslrootcert={other}"),
    ] {
        let e = fails(&tc.url(CERT_HOST, &params)).await;
        assert!(
            e.contains("TLS") && e.contains("unknown issuer") && e.contains("other-ca.pem"),
            "{params}: {e}"
        );
        assert!(e.contains("sslrootcert"), "says what to set: {e}");
    }

    // The verifying modes default to the system's trust store, which lacks the test CA.
    let e = fails(&tc.url(CERT_HOST, "sslmode=verify-full")).await;
    assert!(
        e.contains("TLS") && (e.contains("unknown issuer") || e.contains("trust store")),
        "{e}"
    );

    // A CA file that is not there is named in the error.
    let missing = tc.dir.join("missing.pem");
    let e = fails(&tc.url(
        CERT_HOST,
        &format!("sslmode=verify-full&sslrootcert={}", param(&missing)),
    ))
    .await;
    assert!(e.contains("missing.pem"), "{e}");
}

#[tokio::test]
async fn disable_against_a_hostssl_only_server_says_tls_is_required() {
    let hba =
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n";
    let tc = TlsCluster::start(Some(hba)).await;
    let e = fails(&tc.url("127.0.0.1", "sslmode=disable")).await;
    assert!(
        e.contains("TLS") && e.contains("server requires TLS") && e.contains("sslmode=disable"),
        "{e}"
    );
    assert!(
        !e.contains("cannot reach"),
        "not told as an unreachable server: {e}"
    );
    // The modes that encrypt get in.
    assert!(works(&tc.url("127.0.0.1", "sslmode=require")).await);
    assert!(works(&tc.url("127.0.0.1", "")).await);
    let ca = param(&tc.ca());
    assert!(works(&tc.url(CERT_HOST, &format!("sslmode=verify-full&sslrootcert={ca}"))).await);
}

#[tokio::test]
async fn require_against_a_server_without_tls_fails_and_prefer_falls_back() {
    let tc = TlsCluster::without_tls().await;
    let e = fails(&tc.url("127.0.0.1", "sslmode=require")).await;
    assert!(
        e.contains("TLS") && e.contains("does not accept TLS") && e.contains("sslmode=require"),
        "{e}"
    );
    let ca = param(&tc.ca());
    let e = fails(&tc.url(CERT_HOST, &format!("sslmode=verify-full&sslrootcert={ca}"))).await;
    assert!(e.contains("does not accept TLS"), "{e}");
    // prefer (the default) connects in clear when the server offers no TLS.
    assert!(!works(&tc.url("127.0.0.1", "sslmode=prefer")).await);
    assert!(!works(&tc.url("127.0.0.1", "")).await);
}

/// Runs the pgcable binary with `args` and `DATABASE_URL`; at most 60 s. (exit code, stdout, stderr)
fn pgcable(args: &[&str], url: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgcable"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("DEVISE_JWT_SECRET_KEY", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pgcable");
    let deadline = Instant::now() + Duration::from_secs(60);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pgcable {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn relay_check_and_triggers_over_verify_full() {
    let tc = TlsCluster::start(None).await;
    let ca = param(&tc.ca());
    let url = tc.url(CERT_HOST, &format!("sslmode=verify-full&sslrootcert={ca}"));
    let admin = common::connect(&tc.url("127.0.0.1", "sslmode=disable")).await;
    admin
        .batch_execute(include_str!("../sql/schema.sql"))
        .await
        .expect("schema");

    // `pgcable triggers install` and `status` over verify-full.
    let (code, out, err) = pgcable(&["triggers", "install"], &url);
    assert_eq!(code, 0, "triggers install: {out}{err}");
    let (code, out, err) = pgcable(&["triggers", "status"], &url);
    assert_eq!(code, 0, "triggers status: {out}{err}");

    // `pgcable check` reports TLS and the protocol version for both of its connections.
    let (code, out, err) = pgcable(&["check"], &url);
    assert_eq!(code, 0, "check is a go:\n{out}{err}");
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("tls"))
        .unwrap_or_else(|| panic!("no tls line in:\n{out}"));
    assert!(line.starts_with("ok "), "{line}");
    assert!(
        line.contains("both connections TLS") && line.contains("TLSv1."),
        "{line}"
    );
    assert!(
        line.contains("host name verified against the CA file") && line.contains("verify-full"),
        "{line}"
    );

    // With a CA that did not sign the certificate, check is a no-go that says why.
    let bad = tc.url(
        CERT_HOST,
        &format!("sslmode=verify-full&sslrootcert={}", param(&tc.other_ca())),
    );
    let (code, out, _) = pgcable(&["check"], &bad);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("TLS") && l.contains("unknown issuer")),
        "{out}"
    );

    // sslmode=disable: not encrypted, and said so (ok only because 127.0.0.1 is this machine;
    // over the network it warns, see check's unit tests).
    let (_, out, _) = pgcable(&["check"], &tc.url("127.0.0.1", "sslmode=disable"));
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok ") && l.contains("tls") && l.contains("not encrypted")),
        "{out}"
    );

    // The relay: pool and listener over verify-full, a change delivered end to end.
    let mut config = pgcable::config::Config::new(&url, SECRET);
    config.pool_size = 2;
    let relay = pgcable::server::start(config)
        .await
        .expect("relay starts over TLS");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !relay
        .state
        .listening
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        assert!(Instant::now() < deadline, "relay listener did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let user = Uuid::new_v4();
    admin
        .execute(
            "INSERT INTO users (id, first_name, last_name, name, email, jti, admin, created_at, updated_at) \
             VALUES ($1, 'T', 'U', 'T U', $2, $3, false, now(), now())",
            &[&user, &format!("{user}@example.com"), &user.to_string()],
        )
        .await
        .expect("user");
    let campaign = Uuid::new_v4();
    admin
        .execute(
            "INSERT INTO campaigns (id, user_id, name, created_at, updated_at) VALUES ($1, $2, 'C', now(), now())",
            &[&campaign, &user],
        )
        .await
        .expect("campaign");
    let mut cable = Cable::welcomed(relay.addr, &token(user)).await;
    let identifier = campaign_channel(campaign);
    cable.subscribed(&identifier).await;
    admin
        .execute(
            "SELECT pgcable.broadcast($1, '{\"over\":\"tls\"}'::jsonb)",
            &[&format!("campaign_{campaign}")],
        )
        .await
        .expect("broadcast");
    assert_eq!(
        cable.next_text().await,
        delivery(&identifier, r#"{"over":"tls"}"#)
    );

    // Every connection of the relay is encrypted, as the server sees it.
    let rows = admin
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name IN ('pgcable', 'pgcable-listener')",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(names.iter().any(|n| n == "pgcable-listener"), "{names:?}");
    assert!(names.iter().any(|n| n == "pgcable"), "{names:?}");
    assert!(
        rows.iter().all(|r| r.get::<_, bool>(1)),
        "all over TLS: {names:?}"
    );

    relay.shutdown();
    relay.stopped().await;
}

/// `pgcable dev` on `url`; returns the child and a channel of its stdout lines.
fn dev(url: &str) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgcable"))
        .arg("dev")
        .env("DATABASE_URL", url)
        .env("PGCABLE_LISTEN", "127.0.0.1:0")
        .env_remove("DEVISE_JWT_SECRET_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pgcable dev");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    for stream in [
        Box::new(out) as Box<dyn std::io::Read + Send>,
        Box::new(err) as Box<dyn std::io::Read + Send>,
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    (child, rx)
}

/// Lines until `until` matches one (returned with it) or 60 s pass (panics).
fn read_until(rx: &std::sync::mpsc::Receiver<String>, until: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = until(&line);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(_) => panic!(
                "pgcable dev: expected line not seen; output:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// Sends SIGTERM and waits (at most 30 s) for `child` to exit.
fn terminate(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pgcable dev did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn dev_over_verify_full_and_a_wrong_ca_is_not_mistaken_for_no_server() {
    let tc = TlsCluster::start(None).await;

    // A certificate from the wrong CA: dev stops with the TLS reason; it does not take the
    // failed handshake for "no Postgres here" and start a throwaway cluster instead.
    let bad = tc.url(
        CERT_HOST,
        &format!("sslmode=verify-full&sslrootcert={}", param(&tc.other_ca())),
    );
    let (mut child, rx) = dev(&bad);
    let lines = read_until(&rx, |l| l.starts_with("pgcable:"));
    terminate(&mut child);
    let text = lines.join("\n");
    assert!(!text.contains("throwaway cluster"), "{text}");
    assert!(
        text.contains("TLS") && text.contains("unknown issuer"),
        "{text}"
    );

    // The right CA: the demo database is made over TLS and the relay runs over TLS.
    let good = tc.url(
        CERT_HOST,
        &format!("sslmode=verify-full&sslrootcert={}", param(&tc.ca())),
    );
    let (mut child, rx) = dev(&good);
    let lines = read_until(&rx, |l| l == pgcable::dev::READY_LINE);
    assert!(!lines.join("\n").contains("throwaway cluster"), "{lines:?}");
    let admin = common::connect(&tc.url("127.0.0.1", "sslmode=disable")).await;
    let rows = admin
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name IN ('pgcable', 'pgcable-listener')",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    assert!(!rows.is_empty(), "the dev relay's connections are there");
    assert!(rows.iter().all(|r| r.get::<_, bool>(1)), "all over TLS");
    terminate(&mut child);
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgcable_demo_%'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "the demo database was dropped over TLS");
}
