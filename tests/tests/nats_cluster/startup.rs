//! Starting on a cluster: the `stream_replicas` check against streams kept
//! with another count, the deploy cluster configuration, and daemons
//! started while the cluster has no quorum.

use super::*;

/// A controller's and a dev agent's configuration files in `dir` for
/// `nats_url` with `stream_replicas = 3`, the agent trusting the
/// controller's new key: (controller.toml, agent.toml).
fn daemon_configs(dir: &std::path::Path, nats_url: &str) -> (PathBuf, PathBuf) {
    let key = SigningKey::generate();
    let key_file = dir.join("controller.nk");
    std::fs::write(&key_file, key.seed().unwrap()).unwrap();
    let controller = dir.join("controller.toml");
    std::fs::write(
        &controller,
        format!(
            "nats_url = \"{nats_url}\"\nsigning_key_file = \"{}\"\nstream_replicas = 3\n",
            key_file.display()
        ),
    )
    .unwrap();
    let agent = dir.join("agent.toml");
    std::fs::write(
        &agent,
        format!(
            "environment = \"dev\"\nnats_url = \"{nats_url}\"\nstate_dir = \"{}\"\ntrusted_keys = [\"{}\"]\nstream_replicas = 3\n[services.web]\nport = {}\n",
            dir.join("agent").display(),
            key.public_key(),
            free_port(),
        ),
    )
    .unwrap();
    (controller, agent)
}

/// Runs `binary --config <config>` to its end (bounded), returning its exit
/// code and standard error.
async fn run_to_exit(binary: &str, config: &std::path::Path) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(bin(binary))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{binary} did not exit within {WAIT:?}"))
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_kept_with_another_replica_count_stop_controller_and_agent_with_exit_64_listing_each(
) {
    init_tracing();
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    for spec in streams::all_streams() {
        js.get_or_create_stream(spec.config()).await.unwrap();
    }
    for spec in streams::BUCKETS {
        js.create_key_value(spec.replicated(1)).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (controller, agent) = daemon_configs(dir.path(), &nats.url());
    let (code, stderr) = run_to_exit("ferry-controller", &controller).await;
    assert_eq!(code, Some(64), "{stderr}");
    for stream in streams::all_streams()
        .map(|s| s.name.to_owned())
        .into_iter()
        .chain(streams::BUCKETS.iter().map(|b| b.stream_name()))
    {
        assert!(
            stderr.contains(&format!("stream {stream} has 1 replica(s)")),
            "{stream} not listed: {stderr}"
        );
    }

    let (code, stderr) = run_to_exit("ferry-agent", &agent).await;
    assert_eq!(code, Some(64), "{stderr}");
    for stream in ["FERRY_COMMANDS", "FERRY_EVENTS"] {
        assert!(
            stderr.contains(&format!("stream {stream} has 1 replica(s)")),
            "{stream} not listed: {stderr}"
        );
    }
    // Nothing was changed behind the operator's back.
    for spec in streams::all_streams() {
        let mut stream = js.get_stream(spec.name).await.unwrap();
        assert_eq!(stream.info().await.unwrap().config.num_replicas.max(1), 1);
    }
}

#[test]
fn the_deploy_cluster_configuration_is_valid_syncs_every_write_and_keeps_the_users() {
    let config = ferry_e2e::nats::deploy_config().with_file_name("nats-cluster.conf");
    let store = tempfile::tempdir().unwrap();
    let mut check = std::process::Command::new(ferry_e2e::nats::nats_bin());
    check
        .arg("-t")
        .arg("-c")
        .arg(&config)
        .env("FERRY_NATS_STORE_DIR", store.path())
        .env("FERRY_NATS_SERVER_NAME", "nats-1");
    for (_, variable) in ferry_e2e::nats::DEPLOY_USERS
        .into_iter()
        .chain(ferry_e2e::nats_cluster::LEAF_USERS)
    {
        check.env(variable, "a-password");
    }
    let out = check.output().expect("run nats-server -t");
    assert!(
        out.status.success(),
        "nats-server rejects {}: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&config).unwrap();
    for wanted in [
        "sync_interval: always",
        "jepsen.io/analyses/nats-2.12.1",
        "include ./users.conf",
        "nats-route://nats-3:6222",
    ] {
        assert!(
            text.contains(wanted),
            "{wanted:?} missing from {}",
            config.display()
        );
    }
}

/// A daemon's process with its standard error collected as it runs.
struct Daemon {
    child: tokio::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    fn spawn(binary: &str, config: &std::path::Path) -> Daemon {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(bin(binary))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Daemon { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Asserts the process has not exited.
    fn assert_running(&mut self, binary: &str) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "{binary} exited instead of waiting: {}",
            self.stderr()
        );
    }

    /// Polls until its log holds `wanted`, asserting it keeps running.
    async fn wait_logged(&mut self, binary: &str, wanted: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.stderr().contains(wanted) {
            self.assert_running(binary);
            assert!(
                tokio::time::Instant::now() < deadline,
                "{binary} did not log {wanted:?} within {WAIT:?}: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_and_agent_started_while_the_cluster_has_no_quorum_wait_and_come_up_when_it_returns(
) {
    let Some(cluster) = cluster("started_without_quorum").await else {
        return;
    };
    // Two of three nodes down: JetStream can place no R3 stream.
    cluster.kill(1);
    cluster.kill(2);
    let dir = tempfile::tempdir().unwrap();
    let (controller_config, agent_config) = daemon_configs(dir.path(), &cluster.urls());
    let waiting = "JetStream cannot serve ferry's streams yet";
    let mut controller = Daemon::spawn("ferry-controller", &controller_config);
    let mut agent = Daemon::spawn("ferry-agent", &agent_config);
    controller.wait_logged("ferry-controller", waiting).await;
    agent.wait_logged("ferry-agent", waiting).await;

    let client = async_nats::connect(cluster.url(0)).await.unwrap();
    let dev = ferry_protocol::EnvName::new("dev").unwrap();
    let mut heartbeats = client
        .subscribe(ferry_protocol::subject::agent_event(
            &dev,
            ferry_protocol::subject::AgentEventKind::Heartbeat,
        ))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let back = std::time::Instant::now();
    cluster.start_node(1).await;
    cluster.start_node(2).await;
    tokio::time::timeout(Duration::from_secs(90), heartbeats.next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no heartbeat from the agent within 90 s of the quorum's return: {}",
                agent.stderr()
            )
        })
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let status = std::process::Command::new(bin("ferry"))
            .args(["status", "--output", "json"])
            .env("FERRY_NATS_URL", cluster.url(0))
            .output()
            .unwrap();
        if status.status.success() {
            break;
        }
        controller.assert_running("ferry-controller");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the controller's API did not answer within 90 s of the quorum's return: {}\n{}",
            String::from_utf8_lossy(&status.stderr),
            controller.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "controller and agent up {:?} after the quorum's return began",
        back.elapsed()
    );
    let js = jetstream::new(client.clone());
    for stream in ferry_streams() {
        let mut found = js.get_stream(&stream).await.unwrap();
        assert_eq!(
            found.info().await.unwrap().config.num_replicas,
            3,
            "{stream}"
        );
    }
}
