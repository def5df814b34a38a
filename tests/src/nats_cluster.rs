//! A NATS cluster of real nats-servers in containers on the local Docker
//! engine, for the tests of faults a single server cannot have: a node
//! killed, paused or restarted, a node's link cut and healed.
//!
//! The image is built locally, `FROM scratch` with the static nats-server
//! binary that `scripts/ensure-nats-server` installs (nothing is pulled).
//! Each cluster gets its own network; each node its own container named
//! `nats-<n>` on it (the routes name each other so), its client and
//! monitoring ports published on 127.0.0.1 at fixed host ports so that
//! clients on the host keep one URL per node across restarts. Everything
//! carries the label `ferry.test=nats-cluster` and this cluster's own
//! `ferry.test.cluster=<id>`, and is removed on drop, passed or failed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::free_port;

/// The locally built image.
pub const IMAGE: &str = "ferry-test-nats:local";
/// The label every container and network of the harness carries.
pub const LABEL: &str = "ferry.test=nats-cluster";

/// A running cluster of `nats-server` containers.
pub struct NatsCluster {
    id: String,
    network: String,
    nodes: Vec<Node>,
    /// The leaf nodes' passwords (environment, password) of a cluster on
    /// the deploy configuration.
    leaf_passwords: Vec<(&'static str, String)>,
}

/// The environments' leaf users on the hub of `deploy/nats/nats-cluster.conf`:
/// environment and the variable holding its password.
pub const LEAF_USERS: [(&str, &str); 3] = [
    ("dev", "FERRY_LEAF_DEV_PASSWORD"),
    ("acceptance", "FERRY_LEAF_ACCEPTANCE_PASSWORD"),
    ("production", "FERRY_LEAF_PRODUCTION_PASSWORD"),
];

/// One node: its server name and where the host reaches it.
pub struct Node {
    /// `nats-<n>`: server name, host name and network alias.
    pub name: String,
    container: String,
    /// Host port of its client listener (127.0.0.1).
    pub client_port: u16,
    /// Host port of its monitoring endpoint (127.0.0.1).
    pub monitor_port: u16,
}

/// The streams ferry keeps, buckets' streams included.
pub fn ferry_streams() -> Vec<String> {
    ferry_protocol::streams::all_streams()
        .map(|s| s.name.to_owned())
        .into_iter()
        .chain(
            ferry_protocol::streams::BUCKETS
                .iter()
                .map(|b| b.stream_name()),
        )
        .collect()
}

/// Runs `docker args`, panicking with its stderr on failure; returns stdout.
pub(crate) fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"));
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A nats-server container of the harness's image, before it is started.
struct ContainerSpec<'a> {
    container: &'a str,
    /// Its host name (and server name) on `network`.
    hostname: &'a str,
    network: &'a str,
    /// Another name it answers to on `network`.
    alias: Option<&'a str>,
    /// `ferry.test.cluster=<id>`, beside [`LABEL`].
    cluster_label: &'a str,
    /// Host ports (127.0.0.1) of its client and monitoring listeners.
    ports: (u16, u16),
    /// `NAME=value` for its environment.
    variables: &'a [String],
}

/// `docker create`s the container `spec` describes, reading `/nats.conf`.
fn create_container(spec: &ContainerSpec) {
    let client = format!("127.0.0.1:{}:4222", spec.ports.0);
    let monitor = format!("127.0.0.1:{}:8222", spec.ports.1);
    let mut args: Vec<&str> = vec![
        "create",
        "--name",
        spec.container,
        "--hostname",
        spec.hostname,
        "--network",
        spec.network,
    ];
    if let Some(alias) = spec.alias {
        args.extend(["--network-alias", alias]);
    }
    args.extend([
        "--label",
        LABEL,
        "--label",
        spec.cluster_label,
        "-p",
        &client,
        "-p",
        &monitor,
    ]);
    for variable in spec.variables {
        args.extend(["-e", variable.as_str()]);
    }
    args.extend([IMAGE, "-c", "/nats.conf"]);
    docker(&args);
}

/// The nats-server executable itself: `$TEST_NATS_BIN` may be a pyenv shim
/// (a shell script), which cannot run in a `FROM scratch` image; then the
/// binary it runs is asked of pyenv.
fn nats_binary() -> PathBuf {
    let bin = crate::nats::nats_bin();
    let bin = if bin.components().count() == 1 {
        which(&bin).unwrap_or(bin)
    } else {
        bin
    };
    if is_elf(&bin) {
        return bin;
    }
    let resolved = Command::new("pyenv")
        .args(["which", "nats-server"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match resolved {
        Some(path) if is_elf(&path) => path,
        _ => panic!(
            "{} is not the nats-server executable (a script?); set TEST_NATS_BIN to the static binary",
            bin.display()
        ),
    }
}

fn which(name: &Path) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"\x7fELF"
}

/// Builds [`IMAGE`] unless the engine has it.
pub fn ensure_image() {
    let present = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return;
    }
    let context = tempfile::tempdir().expect("image build context");
    std::fs::copy(nats_binary(), context.path().join("nats-server")).expect("copy nats-server");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY nats-server /nats-server\nENTRYPOINT [\"/nats-server\"]\n",
    )
    .expect("Dockerfile");
    let context = context.path().to_str().expect("utf-8 path");
    docker(&[
        "build", "--quiet", "--label", LABEL, "--tag", IMAGE, context,
    ]);
}

/// A node's configuration: JetStream with every write synced before it is
/// acknowledged (as deploy/nats/nats-cluster.conf), routes to every node by
/// name, and no advertised client URLs (the host reaches the nodes through
/// published ports, never their container addresses).
fn node_config(name: &str, size: usize) -> String {
    let routes: Vec<String> = (1..=size)
        .map(|n| format!("nats-route://nats-{n}:6222"))
        .collect();
    format!(
        "server_name: {name}\nport: 4222\nhttp_port: 8222\nmax_payload: 1MB\n\
         jetstream {{\n  store_dir: /data\n  sync_interval: always\n}}\n\
         cluster {{\n  name: ferry\n  port: 6222\n  no_advertise: true\n  routes: [{}]\n}}\n",
        routes.join(", ")
    )
}

/// The JetStream domain of the hub cluster [`NatsCluster::start_hub`] starts.
pub const HUB_DOMAIN: &str = "hub";

/// Seconds between the pings every harness server sends its connections
/// (leaf links included): a link cut without a reset is noticed within
/// two unanswered pings, not the default four minutes.
const PING: &str = "ping_interval: \"1s\"\nping_max: 2\n";

/// A hub node's configuration: [`node_config`] in the JetStream domain
/// [`HUB_DOMAIN`], with a leaf node listener on 7422 (as
/// deploy/nats/nats-cluster.conf).
fn hub_node_config(name: &str, size: usize) -> String {
    node_config(name, size)
        .replace(
            "jetstream {\n",
            &format!("jetstream {{\n  domain: {HUB_DOMAIN}\n"),
        )
        .replace("max_payload: 1MB\n", &format!("max_payload: 1MB\n{PING}"))
        + "leafnodes {\n  port: 7422\n  no_advertise: true\n}\n"
}

/// An environment's leaf node's configuration (as
/// deploy/nats/leaf-<env>.conf, without users): JetStream in the domain
/// `env`, one remote to every hub node, denying the environment's event
/// subjects both ways ([`ferry_protocol::streams::leaf_event_subjects`]):
/// the hub gets them only through its events stream's source.
fn leaf_config(env: &ferry_protocol::EnvName, hub_size: usize) -> String {
    let urls: Vec<String> = (1..=hub_size)
        .map(|n| format!("\"nats-leaf://nats-{n}:7422\""))
        .collect();
    let denied: Vec<String> = ferry_protocol::streams::leaf_event_subjects(env)
        .into_iter()
        .map(|s| format!("\"{s}\""))
        .collect();
    let denied = denied.join(", ");
    format!(
        "server_name: leaf-{env}\nport: 4222\nhttp_port: 8222\nmax_payload: 1MB\n{PING}\
         jetstream {{\n  domain: {env}\n  store_dir: /data\n  sync_interval: always\n}}\n\
         leafnodes {{\n  reconnect: 1\n  remotes: [\n    {{\n      urls: [{}]\n      \
         deny_exports: [{denied}]\n      deny_imports: [{denied}]\n    }}\n  ]\n}}\n",
        urls.join(", ")
    )
}

/// One environment's nats-server as a leaf node of a hub cluster, in a
/// container on a network of its own (where its published ports are), also
/// attached to the hub's network for its leaf link. Removed on drop.
pub struct LeafNode {
    container: String,
    network: String,
    hub_network: String,
    /// Host port of its client listener (127.0.0.1).
    pub client_port: u16,
    /// Host port of its monitoring endpoint (127.0.0.1).
    pub monitor_port: u16,
}

impl LeafNode {
    /// Its client URL, for the environment's agent.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// Cuts the leaf link: the container leaves the hub's network only, so
    /// clients on the host stay connected to the leaf.
    pub fn cut(&self) {
        docker(&["network", "disconnect", &self.hub_network, &self.container]);
    }

    /// Heals [`LeafNode::cut`].
    pub fn heal(&self) {
        docker(&["network", "connect", &self.hub_network, &self.container]);
    }

    /// How many leaf links this server has up, from its `/leafz`.
    async fn links(&self) -> Option<usize> {
        let url = format!("http://127.0.0.1:{}/leafz", self.monitor_port);
        let answer = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let leafz: serde_json::Value = answer.json().await.ok()?;
        leafz["leafnodes"].as_u64().map(|n| n as usize)
    }

    /// Waits (bounded by a minute) until the leaf link is up, or, with
    /// `up` false, down.
    pub async fn wait_link(&self, up: bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let links = self.links().await;
            if links.is_some_and(|n| (n > 0) == up) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the leaf link was not {} within 60s ({links:?} links)\n{}",
                if up { "up" } else { "down" },
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The id of the client connection named `name` on this leaf (its
    /// `/connz`), `None` when it has none: the same id before and after a
    /// cut shows the client was never disconnected.
    pub async fn connection(&self, name: &str) -> Option<u64> {
        let url = format!("http://127.0.0.1:{}/connz", self.monitor_port);
        let answer = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let connz: serde_json::Value = answer.json().await.ok()?;
        connz["connections"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)?["cid"]
            .as_u64()
    }

    /// The last lines the leaf logged, for failure messages.
    pub fn logs(&self) -> String {
        Command::new("docker")
            .args(["logs", "--tail", "30", &self.container])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for LeafNode {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "--force", "--volumes", &self.container])
            .output();
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

impl NatsCluster {
    /// Starts a hub cluster of `size` open nodes in the JetStream domain
    /// [`HUB_DOMAIN`], each listening for leaf nodes, and waits until every
    /// node is ready.
    pub async fn start_hub(size: usize) -> NatsCluster {
        NatsCluster::launch(size, &[], |name| {
            vec![("/nats.conf".to_owned(), hub_node_config(name, size))]
        })
        .await
    }

    /// Starts `env`'s leaf node of this (hub) cluster and waits until it is
    /// ready and its leaf link is up.
    pub async fn start_leaf(&self, env: &str) -> LeafNode {
        let name = ferry_protocol::EnvName::new(env).expect("environment name");
        let config = leaf_config(&name, self.nodes.len());
        self.start_leaf_with(env, config, &[]).await
    }

    /// Starts `env`'s leaf node on `deploy/nats/leaf-<env>.conf` itself,
    /// with `users` (variable, password) in its environment, as
    /// [`NatsCluster::start_leaf`] does.
    pub async fn start_deploy_leaf(&self, env: &str, users: &[(&'static str, String)]) -> LeafNode {
        let file = crate::nats::deploy_config().with_file_name(format!("leaf-{env}.conf"));
        let config = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let password = self
            .leaf_passwords
            .iter()
            .find(|(e, _)| *e == env)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("no leaf user for {env}: start the hub with start_deploy"));
        let mut vars = users.to_vec();
        for (n, variable) in ["FERRY_HUB_URL_1", "FERRY_HUB_URL_2", "FERRY_HUB_URL_3"]
            .into_iter()
            .enumerate()
        {
            vars.push((
                variable,
                format!(
                    "nats-leaf://ferry-leaf-{env}:{password}@nats-{}:7422",
                    n + 1
                ),
            ));
        }
        self.start_leaf_with(env, config, &vars).await
    }

    async fn start_leaf_with(
        &self,
        env: &str,
        config: String,
        vars: &[(&'static str, String)],
    ) -> LeafNode {
        let env = ferry_protocol::EnvName::new(env).expect("environment name");
        let cluster_label = format!("ferry.test.cluster={}", self.id);
        // Named to sort before the hub's network: the engine routes the
        // published ports through the first network by name, and those must
        // stay up when the hub's is cut.
        let network = format!("ferry-leaf-{}-{env}", self.id);
        assert!(
            network < self.network,
            "{network} sorts after {}",
            self.network
        );
        docker(&[
            "network",
            "create",
            "--label",
            LABEL,
            "--label",
            &cluster_label,
            &network,
        ]);
        let leaf = LeafNode {
            container: network.clone(),
            network: network.clone(),
            hub_network: self.network.clone(),
            client_port: free_port(),
            monitor_port: free_port(),
        };
        let mut variables = vec!["FERRY_NATS_STORE_DIR=/data".to_owned()];
        variables.extend(vars.iter().map(|(k, v)| format!("{k}={v}")));
        create_container(&ContainerSpec {
            container: &leaf.container,
            hostname: &format!("leaf-{env}"),
            network: &network,
            alias: None,
            cluster_label: &cluster_label,
            ports: (leaf.client_port, leaf.monitor_port),
            variables: &variables,
        });
        let dir = tempfile::tempdir().expect("config dir");
        let local = dir.path().join("leaf.conf");
        std::fs::write(&local, config).expect("leaf config");
        docker(&[
            "cp",
            local.to_str().expect("utf-8 path"),
            &format!("{}:/nats.conf", leaf.container),
        ]);
        // Its published ports stay on its own network; the hub's is for
        // the leaf link alone.
        docker(&["network", "connect", &self.network, &leaf.container]);
        docker(&["start", &leaf.container]);
        wait_healthz(leaf.monitor_port, Duration::from_secs(60), || {
            format!(
                "leaf {env} never became healthy within 60s\n{}",
                leaf.logs()
            )
        })
        .await;
        leaf.wait_link(true).await;
        leaf
    }

    /// Starts a cluster of `size` open nodes (no users) and waits until
    /// every node reports JetStream ready (`/healthz`).
    pub async fn start(size: usize) -> NatsCluster {
        NatsCluster::launch(size, &[], |name| {
            vec![("/nats.conf".to_owned(), node_config(name, size))]
        })
        .await
    }

    /// Starts the 3 nodes of `deploy/nats/nats-cluster.conf` (with
    /// `users.conf`): the deployment's users and permissions, their
    /// passwords from `users` (variable, password) in each node's
    /// environment.
    pub async fn start_deploy(users: &[(&'static str, String)]) -> NatsCluster {
        let dir = crate::nats::deploy_config();
        let read = |file: &str| {
            std::fs::read_to_string(dir.with_file_name(file))
                .unwrap_or_else(|e| panic!("read deploy/nats/{file}: {e}"))
        };
        let (cluster, users_conf) = (read("nats-cluster.conf"), read("users.conf"));
        let leaf_passwords: Vec<(&'static str, String)> = LEAF_USERS
            .iter()
            .map(|(env, _)| (*env, uuid::Uuid::new_v4().simple().to_string()))
            .collect();
        let mut env = users.to_vec();
        env.extend(
            LEAF_USERS
                .iter()
                .zip(&leaf_passwords)
                .map(|((_, variable), (_, password))| (*variable, password.clone())),
        );
        let mut started = NatsCluster::launch(3, &env, |_| {
            vec![
                ("/nats.conf".to_owned(), cluster.clone()),
                ("/users.conf".to_owned(), users_conf.clone()),
            ]
        })
        .await;
        started.leaf_passwords = leaf_passwords;
        started
    }

    /// Creates the network and `size` nodes, each with the files
    /// `files(name)` gives (path in the container, content; `/nats.conf` is
    /// the configuration) and `env` plus its server name and store in its
    /// environment; starts them and waits until each is ready.
    async fn launch(
        size: usize,
        env: &[(&'static str, String)],
        files: impl Fn(&str) -> Vec<(String, String)>,
    ) -> NatsCluster {
        ensure_image();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let network = format!("ferry-nats-{id}");
        let cluster_label = format!("ferry.test.cluster={id}");
        docker(&[
            "network",
            "create",
            "--label",
            LABEL,
            "--label",
            &cluster_label,
            &network,
        ]);
        let mut cluster = NatsCluster {
            id,
            network,
            nodes: Vec::new(),
            leaf_passwords: Vec::new(),
        };
        let config_dir = tempfile::tempdir().expect("config dir");
        for n in 1..=size {
            let name = format!("nats-{n}");
            let node = Node {
                container: format!("{}-{n}", cluster.network),
                name: name.clone(),
                client_port: free_port(),
                monitor_port: free_port(),
            };
            let mut variables = vec![
                format!("FERRY_NATS_SERVER_NAME={name}"),
                "FERRY_NATS_STORE_DIR=/data".to_owned(),
            ];
            variables.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
            create_container(&ContainerSpec {
                container: &node.container,
                hostname: &name,
                network: &cluster.network,
                alias: Some(&name),
                cluster_label: &cluster_label,
                ports: (node.client_port, node.monitor_port),
                variables: &variables,
            });
            // Registered before anything else can fail, so drop removes it.
            cluster.nodes.push(node);
            let container = &cluster.nodes[n - 1].container;
            for (k, (path, content)) in files(&name).into_iter().enumerate() {
                let local = config_dir.path().join(format!("{name}-{k}"));
                std::fs::write(&local, content).expect("node file");
                let local = local.to_str().expect("utf-8 path");
                docker(&["cp", local, &format!("{container}:{path}")]);
            }
        }
        for node in &cluster.nodes {
            docker(&["start", &node.container]);
        }
        for n in 0..size {
            cluster.wait_ready(n).await;
        }
        cluster
    }

    /// Every node's client URL, comma-separated, as ferry's `nats_url` takes them.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|n| self.url(n))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `n`'s client URL (0-based).
    pub fn url(&self, n: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[n].client_port)
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The index of the node named `server_name`.
    pub fn index_of(&self, server_name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == server_name)
            .unwrap_or_else(|| panic!("{server_name} is not a node of this cluster"))
    }

    /// Waits until node `n` reports itself healthy with JetStream current
    /// (its `/healthz`), bounded by a minute (elections take seconds).
    pub async fn wait_ready(&self, n: usize) {
        let url = format!("http://127.0.0.1:{}/healthz", self.nodes[n].monitor_port);
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let last = match http.get(&url).timeout(Duration::from_secs(2)).send().await {
                Ok(answer) if answer.status().is_success() => return,
                Ok(answer) => format!("{}: {:?}", answer.status(), answer.text().await),
                Err(e) => e.to_string(),
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never became healthy within 60s; last answer: {last}\n{}",
                self.nodes[n].name,
                self.logs(n)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last lines node `n` logged, for failure messages.
    pub fn logs(&self, n: usize) -> String {
        Command::new("docker")
            .args(["logs", "--tail", "30", &self.nodes[n].container])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default()
    }

    /// SIGKILL to node `n`: a crash; its store stays in the container.
    pub fn kill(&self, n: usize) {
        docker(&["kill", &self.nodes[n].container]);
    }

    /// Starts node `n` again after [`NatsCluster::kill`], on its store, and
    /// waits until it is healthy.
    pub async fn start_node(&self, n: usize) {
        docker(&["start", &self.nodes[n].container]);
        self.wait_ready(n).await;
    }

    /// Freezes node `n` (`docker pause`): its connections stay open and silent.
    pub fn pause(&self, n: usize) {
        docker(&["pause", &self.nodes[n].container]);
    }

    /// Thaws node `n` after [`NatsCluster::pause`].
    pub fn unpause(&self, n: usize) {
        docker(&["unpause", &self.nodes[n].container]);
    }

    /// Cuts node `n` off the cluster's network: no routes, no clients.
    pub fn disconnect(&self, n: usize) {
        docker(&[
            "network",
            "disconnect",
            &self.network,
            &self.nodes[n].container,
        ]);
    }

    /// Heals [`NatsCluster::disconnect`]: node `n` rejoins under its name.
    pub fn connect(&self, n: usize) {
        let node = &self.nodes[n];
        docker(&[
            "network",
            "connect",
            "--alias",
            &node.name,
            &self.network,
            &node.container,
        ]);
    }

    /// The server name of the current leader of consumer `name` of
    /// `stream` (`$JS.API.CONSUMER.INFO`), `None` while it has none.
    pub async fn consumer_leader(
        &self,
        client: &async_nats::Client,
        stream: &str,
        name: &str,
    ) -> Option<String> {
        let answer = client
            .request(format!("$JS.API.CONSUMER.INFO.{stream}.{name}"), "".into())
            .await
            .ok()?;
        let info: serde_json::Value = serde_json::from_slice(&answer.payload).ok()?;
        info["cluster"]["leader"].as_str().map(str::to_owned)
    }

    /// The server name of the current leader of `stream`, from the
    /// JetStream API (`$JS.API.STREAM.INFO.<stream>`, `cluster.leader`).
    pub async fn stream_leader(&self, client: &async_nats::Client, stream: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = client
                .request(format!("$JS.API.STREAM.INFO.{stream}"), "".into())
                .await;
            let leader = answer.ok().and_then(|m| {
                let info: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
                info["cluster"]["leader"].as_str().map(str::to_owned)
            });
            if let Some(leader) = leader {
                return leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stream {stream} had no leader within 30s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until each of `streams` has a leader other than node `down`
    /// (elected after it was killed or cut off), bounded by a minute.
    pub async fn wait_failover(
        &self,
        client: &async_nats::Client,
        down: usize,
        streams: &[String],
    ) {
        let down = &self.nodes[down].name;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for stream in streams {
            loop {
                let leader = self.stream_leader(client, stream).await;
                if &leader != down {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{stream} still led by {down} a minute after it went"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// The node a client named `connection_name` is connected to, from each
    /// node's `/connz`; `None` when none lists it.
    pub async fn node_serving(&self, connection_name: &str) -> Option<usize> {
        let http = reqwest::Client::new();
        for (n, node) in self.nodes.iter().enumerate() {
            let url = format!("http://127.0.0.1:{}/connz", node.monitor_port);
            let Ok(answer) = http.get(&url).timeout(Duration::from_secs(2)).send().await else {
                continue;
            };
            let Ok(connz) = answer.json::<serde_json::Value>().await else {
                continue;
            };
            let listed = connz["connections"]
                .as_array()
                .is_some_and(|all| all.iter().any(|c| c["name"] == connection_name));
            if listed {
                return Some(n);
            }
        }
        None
    }

    /// The replica count of `stream` as the server reports it.
    pub async fn stream_replicas(&self, client: &async_nats::Client, stream: &str) -> usize {
        let answer = client
            .request(format!("$JS.API.STREAM.INFO.{stream}"), "".into())
            .await
            .unwrap_or_else(|e| panic!("stream info {stream}: {e}"));
        let info: serde_json::Value = serde_json::from_slice(&answer.payload).expect("JSON");
        info["config"]["num_replicas"]
            .as_u64()
            .unwrap_or_else(|| panic!("no num_replicas in {info}")) as usize
    }

    /// This cluster's id, as in its `ferry.test.cluster` label.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for NatsCluster {
    /// Removes every container and the network of this cluster, found by
    /// label, so that a failed test leaves nothing behind either.
    fn drop(&mut self) {
        crate::docker::remove_containers(&[format!("label=ferry.test.cluster={}", self.id)]);
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

/// Waits until a nats-server answers `/healthz` on host port `monitor`
/// within `limit`; fails the test with `failure()` otherwise.
pub(crate) async fn wait_healthz(monitor: u16, limit: Duration, failure: impl Fn() -> String) {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{monitor}/healthz");
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ready = http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|a| a.status().is_success());
        if ready {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", failure());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
