//! TLS as production runs it: nats-server with a certificate from a CA made
//! at test time (rcgen) and `verify: true`, the real `ferry-controller`,
//! `ferry-agent` and `ferry` binaries verifying it against that CA and
//! presenting client certificates it signed. The basic flow (a release
//! published by the CLI, deployed to dev) runs over it; a client certificate
//! from another CA, none at all, and a client without TLS are refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_e2e::nats::NatsServer;
use ferry_e2e::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its key, as PEM files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

/// The certificates of one test, under `dir`.
struct Pki {
    ca: PathBuf,
    server: Pair,
    client: Pair,
    /// Signed by a CA the server does not trust.
    untrusted: Pair,
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(
    dir: &Path,
    name: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
) -> Pair {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let pair = Pair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&pair.cert, cert.pem()).unwrap();
    std::fs::write(&pair.key, key.serialize_pem()).unwrap();
    pair
}

fn make_pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    let (ca_pem, ca) = new_ca("ferry test CA");
    let (_, other_ca) = new_ca("another CA");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    Pki {
        ca: ca_file,
        server: leaf(
            dir,
            "nats-server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
        ),
        client: leaf(
            dir,
            "ferry-client",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca,
        ),
        untrusted: leaf(
            dir,
            "untrusted-client",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            &other_ca,
        ),
    }
}

/// nats-server with JetStream and TLS verifying clients against the CA.
fn tls_server(pki: &Pki) -> NatsServer {
    NatsServer::start_with_config(&format!(
        "jetstream {{\n  store_dir: $FERRY_NATS_STORE_DIR\n}}\n\
         tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 5\n}}\n",
        pki.server.cert.display(),
        pki.server.key.display(),
        pki.ca.display(),
    ))
}

/// The daemons' TLS settings: the CA, and `client` if given.
fn tls_toml(ca: Option<&Path>, client: Option<&Pair>) -> String {
    let mut toml = String::new();
    if let Some(ca) = ca {
        toml.push_str(&format!("nats_tls_ca_file = \"{}\"\n", ca.display()));
    }
    if let Some(pair) = client {
        toml.push_str(&format!(
            "nats_tls_cert_file = \"{}\"\nnats_tls_key_file = \"{}\"\n",
            pair.cert.display(),
            pair.key.display()
        ));
    }
    toml
}

fn controller_toml(system: &System, tls: &str) -> PathBuf {
    let key_file = system.dir.path().join("controller.nk");
    std::fs::write(&key_file, system.controller_key.seed().unwrap()).unwrap();
    let path = system.dir.path().join("controller.toml");
    std::fs::write(
        &path,
        format!(
            "nats_url = \"{}\"\n{tls}signing_key_file = \"{}\"\nenvironments = [\"dev\", \"acceptance\", \"production\"]\nagent_timeout = \"30s\"\n",
            system.nats.url(),
            key_file.display(),
        ),
    )
    .unwrap();
    path
}

fn agent_toml(system: &System, tls: &str, port: u16) -> PathBuf {
    let path = system.dir.path().join("agent-dev.toml");
    std::fs::write(
        &path,
        system.agent_toml(
            "dev",
            &format!(
                "{tls}heartbeat_interval = \"500ms\"\n\n[services.web]\ncommand = [\"{{artifact}}\"]\nlisten = \"127.0.0.1:{port}\"\nreplicas = 2\n\n[services.web.health]\npath = \"/health\"\ninterval = \"100ms\"\n"
            ),
        ),
    )
    .unwrap();
    path
}

/// A daemon (`ferry-controller`, `ferry-agent`) on `config`, its output
/// piped; killed on drop.
struct Daemon(Option<Child>);

impl Daemon {
    fn start(binary: &str, config: &Path) -> Daemon {
        Daemon(Some(
            Command::new(bin(binary))
                .arg("--config")
                .arg(config)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        ))
    }

    /// Waits for the daemon to exit (it must, within [`WAIT`]) and returns
    /// its output.
    fn exited(mut self) -> Output {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + WAIT;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "still running after {WAIT:?}: {:?}",
                    child.wait_with_output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    fn running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The CLI with `args` and the TLS settings given as its variables.
async fn cli(system: &System, ca: Option<&Path>, client: Option<&Pair>, args: &[&str]) -> Output {
    let mut command = system.cli_command(cli_user(args), args);
    if let Some(ca) = ca {
        command.env("FERRY_NATS_TLS_CA_FILE", ca);
    }
    if let Some(pair) = client {
        command
            .env("FERRY_NATS_TLS_CERT_FILE", &pair.cert)
            .env("FERRY_NATS_TLS_KEY_FILE", &pair.key);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_deploys_to_dev_over_tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let system = System::with_nats(tls_server(&pki));
    let tls = tls_toml(Some(&pki.ca), Some(&pki.client));
    let ca = Some(pki.ca.as_path());
    let client = Some(&pki.client);

    let mut controller = Daemon::start("ferry-controller", &controller_toml(&system, &tls));
    let deadline = Instant::now() + WAIT;
    loop {
        let out = cli(&system, ca, client, &["status", "--output", "json"]).await;
        if out.status.success() {
            break;
        }
        assert!(
            controller.running(),
            "the controller exited: {:?}",
            controller.exited()
        );
        assert!(
            Instant::now() < deadline,
            "controller API did not answer over TLS within {WAIT:?}: {}",
            stderr(&out)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let port = free_port();
    let mut agent = Daemon::start("ferry-agent", &agent_toml(&system, &tls, port));

    let sample = bin("ferry-sample");
    let out = cli(
        &system,
        ca,
        client,
        &[
            "release",
            "publish",
            "--service",
            "web",
            "--version",
            "1.0.0",
            "--artifact",
            sample.to_str().unwrap(),
            "--author",
            "ci-bot",
        ],
    )
    .await;
    assert_ok(&out, "ferry release publish over TLS");
    wait_serving(port, "1.0.0", WAIT).await;

    let deadline = Instant::now() + WAIT;
    loop {
        let out = cli(&system, ca, client, &["status", "--output", "json"]).await;
        assert_ok(&out, "ferry status over TLS");
        let running = json(&out).as_array().unwrap().iter().any(|r| {
            r["environment"] == "dev"
                && r["service"] == "web"
                && r["version"] == "1.0.0"
                && r["state"] == "running"
        });
        if running {
            break;
        }
        assert!(agent.running(), "the agent exited: {:?}", agent.exited());
        assert!(
            Instant::now() < deadline,
            "dev/web 1.0.0 not running: {}",
            json(&out)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(agent.running() && controller.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_missing_and_plain_clients_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let system = System::with_nats(tls_server(&pki));
    let ca = Some(pki.ca.as_path());

    // The daemons with a certificate of another CA: refused, they exit.
    let untrusted = tls_toml(ca, Some(&pki.untrusted));
    for (daemon, config) in [
        ("ferry-controller", controller_toml(&system, &untrusted)),
        ("ferry-agent", agent_toml(&system, &untrusted, free_port())),
    ] {
        let out = Daemon::start(daemon, &config).exited();
        let log = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        assert!(
            !out.status.success(),
            "{daemon} with an untrusted certificate: {log}"
        );
        assert_ne!(
            out.status.code(),
            Some(64),
            "{daemon}: not a configuration error: {log}"
        );
        assert!(log.contains("TLS"), "{daemon} names TLS: {log}");
    }
    // The agent without any TLS setting: the server's certificate is not
    // one the system trusts, and it has no client certificate.
    let out = Daemon::start("ferry-agent", &agent_toml(&system, "", free_port())).exited();
    assert!(!out.status.success(), "agent without TLS: {}", stderr(&out));

    // The CLI: an untrusted certificate, none (the server verifies
    // clients), and no TLS settings at all.
    for (what, ca, client) in [
        ("an untrusted client certificate", ca, Some(&pki.untrusted)),
        ("no client certificate", ca, None),
        ("no TLS settings", None, None),
    ] {
        let out = cli(&system, ca, client, &["status"]).await;
        assert!(!out.status.success(), "the CLI with {what} was let in");
        assert!(
            stderr(&out).contains("TLS"),
            "the CLI with {what} names TLS: {}",
            stderr(&out)
        );
    }

    // A missing file is a configuration error naming its key; check-config
    // shows the files by path only.
    let missing = system.dir.path().join("missing.pem");
    let config = agent_toml(
        &system,
        &format!("nats_tls_ca_file = \"{}\"\n", missing.display()),
        free_port(),
    );
    let out = Daemon::start("ferry-agent", &config).exited();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nats_tls_ca_file"),
        "{}",
        stderr(&out)
    );
    let config = controller_toml(&system, &tls_toml(ca, Some(&pki.client)));
    let out = Command::new(bin("ferry-controller"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(shown.contains(pki.client.key.to_str().unwrap()), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}
