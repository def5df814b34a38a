//! A real nats-server per test: JetStream on, a free loopback port, its own
//! store directory; killed and removed on drop. Open (no authentication) by
//! default; [`NatsServer::start_with_permissions`] runs it with the
//! deployment configuration `deploy/nats/nats-server.conf` instead (one user
//! per role, subject permissions), its passwords generated per server;
//! [`NatsServer::start_with_config`] with a configuration a test writes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A running nats-server.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    config: Option<PathBuf>,
    /// Per-user passwords and the files holding them, with a config.
    users: Vec<User>,
    /// The URLs of servers the harness does not run as a child (a cluster
    /// of containers, [`crate::nats_cluster::NatsCluster`]), comma-separated.
    external: Option<String>,
}

/// A user of `deploy/nats/nats-server.conf`.
struct User {
    name: &'static str,
    /// The environment variable the configuration reads its password from.
    variable: &'static str,
    password: String,
    password_file: PathBuf,
}

/// The users of `deploy/nats/nats-server.conf` and the environment variable
/// each one's password comes from.
pub const DEPLOY_USERS: [(&str, &str); 6] = [
    ("ferry-controller", "FERRY_CONTROLLER_PASSWORD"),
    ("ferry-ci", "FERRY_CI_PASSWORD"),
    ("ferry-cli", "FERRY_CLI_PASSWORD"),
    ("ferry-agent-dev", "FERRY_AGENT_DEV_PASSWORD"),
    ("ferry-agent-acceptance", "FERRY_AGENT_ACCEPTANCE_PASSWORD"),
    ("ferry-agent-production", "FERRY_AGENT_PRODUCTION_PASSWORD"),
];

/// A password for every user of [`DEPLOY_USERS`], each also written to a
/// file under `dir` for the clients.
fn generate_users(dir: &std::path::Path) -> Vec<User> {
    let secrets = dir.join("passwords");
    std::fs::create_dir_all(&secrets).expect("password dir");
    DEPLOY_USERS
        .iter()
        .map(|&(name, variable)| {
            let password = format!("{}", uuid::Uuid::new_v4().simple());
            let password_file = secrets.join(name);
            std::fs::write(&password_file, format!("{password}\n")).expect("password file");
            User {
                name,
                variable,
                password,
                password_file,
            }
        })
        .collect()
}

/// The deployment configuration, `deploy/nats/nats-server.conf`.
pub fn deploy_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/nats-server.conf")
}

/// The nats-server binary: `$TEST_NATS_BIN`, else `nats-server` on PATH.
pub fn nats_bin() -> PathBuf {
    std::env::var_os("TEST_NATS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
            config: None,
            users: Vec::new(),
            external: None,
        };
        server.spawn_on_a_free_port();
        server
    }

    /// Servers run by someone else with the deployment users (a cluster on
    /// `deploy/nats/nats-cluster.conf`), reached at `urls`: their passwords
    /// are generated here; [`NatsServer::user_environment`] gives them to
    /// the servers.
    pub fn external_with_users(urls: String) -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir");
        let users = generate_users(store.path());
        NatsServer {
            child: None,
            port: 0,
            store,
            config: Some(deploy_config()),
            users,
            external: Some(urls),
        }
    }

    /// Points a client-side handle of external servers at `urls`, once they
    /// are known (the servers need the passwords before they start).
    pub fn point_at(&mut self, urls: String) {
        self.external = Some(urls);
    }

    /// Each user's password variable and password, as the deploy
    /// configuration reads them from the server's environment.
    pub fn user_environment(&self) -> Vec<(&'static str, String)> {
        self.users
            .iter()
            .map(|u| (u.variable, u.password.clone()))
            .collect()
    }

    /// Servers run by someone else (open, no users), reached at `urls`
    /// (comma-separated); [`NatsServer::kill`] and [`NatsServer::restart`]
    /// do nothing to them: a cluster's own harness does.
    pub fn external(urls: String) -> NatsServer {
        NatsServer {
            child: None,
            port: 0,
            store: tempfile::tempdir().expect("temp dir"),
            config: None,
            users: Vec::new(),
            external: Some(urls),
        }
    }

    /// Starts a server with `deploy/nats/nats-server.conf` (its port and store
    /// directory overridden by flags), each user's password generated and
    /// passed in the environment variable the configuration names, and
    /// written to a file for the clients.
    pub fn start_with_permissions() -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let users = generate_users(store.path());
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
            config: Some(deploy_config()),
            users,
            external: None,
        };
        server.spawn_on_a_free_port();
        server
    }

    /// Starts a server with the configuration `text` (written to a file
    /// beside its store; its port and address set by flags, its JetStream
    /// store directory by `FERRY_NATS_STORE_DIR`, which `text` names as
    /// `store_dir: $FERRY_NATS_STORE_DIR`). The test brings its own clients:
    /// [`NatsServer::client`] and the others connect without TLS or users.
    pub fn start_with_config(text: &str) -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let config = store.path().join("nats-server.conf");
        std::fs::write(&config, text).expect("write the nats-server configuration");
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
            config: Some(config),
            users: Vec::new(),
            external: None,
        };
        server.spawn_on_a_free_port();
        server
    }

    /// Whether the server runs with the deployment permissions.
    pub fn has_permissions(&self) -> bool {
        !self.users.is_empty()
    }

    /// The file holding `user`'s password (servers with permissions only).
    pub fn password_file(&self, user: &str) -> PathBuf {
        self.user(user).password_file.clone()
    }

    fn user(&self, name: &str) -> &User {
        self.users
            .iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("{name} is not a user of the deploy configuration"))
    }

    /// Options authenticating as `user` with replies under `inbox_prefix`.
    pub fn options_as(&self, user: &str, inbox_prefix: &str) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::with_user_and_password(
            user.to_owned(),
            self.user(user).password.clone(),
        )
        .custom_inbox_prefix(inbox_prefix)
    }

    /// A client as CI is one, to publish releases: the `ferry-ci` user on
    /// the deploy configuration, anonymous on an open server.
    pub async fn ci_client(&self) -> async_nats::Client {
        if self.config.is_some() {
            self.client_as("ferry-ci", "_INBOX_ferry_ci").await
        } else {
            self.client().await
        }
    }

    /// A client as the CLI is one, to call the controller's API: the
    /// `ferry-cli` user on the deploy configuration, anonymous on an open
    /// server.
    pub async fn cli_client(&self) -> async_nats::Client {
        if self.config.is_some() {
            self.client_as("ferry-cli", "_INBOX_ferry_cli").await
        } else {
            self.client().await
        }
    }

    /// A client authenticated as `user` with replies under `inbox_prefix`.
    pub async fn client_as(&self, user: &str, inbox_prefix: &str) -> async_nats::Client {
        let servers = ferry_protocol::streams::server_list(&self.url()).expect("NATS URLs");
        self.options_as(user, inbox_prefix)
            .connect(servers)
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
    }

    /// Starts the server on `self.port`, or on another free port when that
    /// one was taken meanwhile (a free port is only free until someone binds
    /// it: another test's proxy may have got it first).
    fn spawn_on_a_free_port(&mut self) {
        for _ in 0..5 {
            match self.try_spawn() {
                Ok(()) => return,
                Err(why) => {
                    eprintln!(
                        "nats-server on port {}: {why}; trying another port",
                        self.port
                    );
                    self.stop_child();
                    self.port = free_port();
                }
            }
        }
        panic!("nats-server did not start on any of 5 free ports");
    }

    fn spawn(&mut self) {
        if self.external.is_some() {
            return;
        }
        if let Err(why) = self.try_spawn() {
            panic!("nats-server on port {}: {why}", self.port);
        }
    }

    fn stop_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Spawns the server and waits until it, not something else, answers
    /// on its port with the NATS `INFO` greeting.
    fn try_spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new(nats_bin());
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match &self.config {
            // The configuration names its store directory through
            // FERRY_NATS_STORE_DIR (nats-server refuses -sd beside it).
            Some(config) => {
                command
                    .arg("-c")
                    .arg(config)
                    .env("FERRY_NATS_STORE_DIR", self.store.path());
            }
            None => {
                command.arg("-sd").arg(self.store.path());
            }
        }
        for user in &self.users {
            command.env(user.variable, &user.password);
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {:?}: {e}. Install nats-server >= 2.11 (scripts/ensure-nats-server does) or set TEST_NATS_BIN",
                nats_bin()
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("exited with {status}"));
            }
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let mut greeting = [0u8; 5];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                return match std::io::Read::read_exact(&mut stream, &mut greeting) {
                    Ok(()) if &greeting == b"INFO " => Ok(()),
                    _ => Err("something other than nats-server answers there".to_owned()),
                };
            }
            if Instant::now() >= deadline {
                return Err("did not listen within 10s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:PORT`; an external cluster's URLs, comma-separated.
    pub fn url(&self) -> String {
        if let Some(urls) = &self.external {
            return urls.clone();
        }
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its store stays, as after a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A client connected to it; on a server with permissions, as the
    /// controller's user (tests that publish signed commands or read the
    /// streams play the controller; the other roles use their own users).
    pub async fn client(&self) -> async_nats::Client {
        if self.has_permissions() {
            return self
                .client_as("ferry-controller", "_INBOX_ferry_controller")
                .await;
        }
        let servers = ferry_protocol::streams::server_list(&self.url()).expect("NATS URLs");
        async_nats::connect(servers)
            .await
            .expect("connect to the test nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
