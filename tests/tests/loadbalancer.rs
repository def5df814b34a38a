//! The load balancer configurations of `deploy/loadbalancer/` in front of an
//! environment's hosts: each is valid as shipped and names the hosts'
//! stable port of `web` as the agent's configuration sets it; and a copy of
//! each on loopback ports (the shipped file with only its addresses
//! substituted), in front of real `ferry-sample` processes standing in for
//! the hosts' stable ports, keeps serving when a host dies. HAProxy also
//! takes out, on its `/health` checks, a host that answers 503 (as one in
//! maintenance does) and one that died, and puts a host back when it
//! answers again. They need Debian's `haproxy` and `nginx` (scripts/test
//! installs them): without one, its tests fail under CI and are skipped
//! otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_e2e::{bin, free_port, init_tracing, WAIT};

/// The hosts of the shipped configurations: HAProxy's server name and the
/// address both files give it.
const HOSTS: [(&str, &str); 3] = [
    ("production-1", "10.0.0.11:8082"),
    ("production-2", "10.0.0.12:8082"),
    ("production-3", "10.0.0.13:8082"),
];

/// A shipped file of `deploy/loadbalancer/`, as an absolute path.
fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/loadbalancer")
        .join(name)
        .canonicalize()
        .unwrap_or_else(|e| panic!("deploy/loadbalancer/{name}: {e}"))
}

/// `name`'s binary, looked for on PATH and in the sbin directories (where
/// Debian installs haproxy and nginx, often off a user's PATH). When it is
/// missing: panics under CI (`CI` set), else prints why `test` is skipped.
fn tool(test: &str, name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        let reason = format!("no {name} found; install it with scripts/apt-install {name}");
        if std::env::var_os("CI").is_some() {
            panic!("{test}: {reason} (CI is set, so the load balancer tests must run)");
        }
        eprintln!("SKIPPED {test}: {reason}");
    }
    found
}

/// `text` with `from`, which must occur exactly once in it, replaced by `to`:
/// a shipped file that no longer has what a copy substitutes fails here
/// rather than running untested.
fn substitute(text: &str, from: &str, to: &str, file: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} should occur exactly once in deploy/loadbalancer/{file}"
    );
    text.replacen(from, to, 1)
}

/// `text` with each shipped host address replaced by a loopback port.
fn at_hosts(mut text: String, ports: &[u16; 3], file: &str) -> String {
    for ((_, address), port) in HOSTS.iter().zip(ports) {
        text = substitute(&text, address, &format!("127.0.0.1:{port}"), file);
    }
    text
}

/// A child process, killed and reaped when dropped (or on `kill`).
struct Running {
    child: Child,
    what: String,
    log: Option<PathBuf>,
}

impl Running {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Panics with the process's log if it has exited.
    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = self
                .log
                .as_ref()
                .and_then(|log| std::fs::read_to_string(log).ok())
                .unwrap_or_default();
            panic!("{} exited ({status}):\n{log}", self.what);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `program` with `args`, its output in `log`.
fn start(program: &Path, args: &[&str], log: &Path) -> Running {
    let out = std::fs::File::create(log).expect("log file");
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    Running {
        child,
        what: program.display().to_string(),
        log: Some(log.to_owned()),
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

/// GET `path` on a loopback port: the status and the `x-version` header
/// (the sample's version, here the name of the host it stands for).
async fn get(client: &reqwest::Client, port: u16, path: &str) -> Option<(u16, String)> {
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    let version = response
        .headers()
        .get("x-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some((response.status().as_u16(), version))
}

/// Polls `probe` every 50 ms until it gives something, checking that
/// `process` is still running; fails with `what` after [`WAIT`].
async fn poll<T, F>(what: &str, process: &mut Running, mut probe: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        process.assert_alive();
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {what} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A ferry-sample standing in for `host`'s stable port: it answers `/` 200
/// with `x-version: <host>`, and `/health` 200, or 503 unless `healthy`.
async fn host(host: &str, port: u16, healthy: bool) -> Running {
    let mut sample = Command::new(bin("ferry-sample"));
    sample
        .env_remove("FERRY_VERSION")
        .env("PORT", port.to_string())
        .env("SAMPLE_VERSION", host)
        .env("SAMPLE_HEALTHY", healthy.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut running = Running {
        child: sample.spawn().expect("start ferry-sample"),
        what: format!("ferry-sample for {host}"),
        log: None,
    };
    let client = http();
    poll(&format!("{host}'s sample answering"), &mut running, || {
        let client = client.clone();
        async move {
            get(&client, port, "/")
                .await
                .filter(|(status, version)| *status == 200 && version == host)
        }
    })
    .await;
    running
}

/// The port of `web` in deploy/agent-production.toml, whose hosts the
/// shipped configurations balance over.
fn production_web_port() -> u16 {
    let config = ferry_agent::config::from_toml(include_str!("../../deploy/agent-production.toml"))
        .expect("deploy/agent-production.toml");
    assert_eq!(config.host.as_str(), HOSTS[0].0);
    let web = ferry_protocol::ServiceName::new("web").unwrap();
    config.services[&web].listen.port()
}

#[test]
fn the_shipped_configurations_balance_over_the_agents_stable_port_of_the_service() {
    let port = production_web_port();
    for file in ["haproxy.cfg", "nginx.conf"] {
        let text = std::fs::read_to_string(shipped(file)).unwrap();
        for (_, address) in HOSTS {
            assert!(
                address.ends_with(&format!(":{port}")),
                "{address} is not web's stable port {port}"
            );
            assert!(
                text.contains(address),
                "{address} missing from deploy/loadbalancer/{file}"
            );
        }
    }
}

// ---------------------------------------------------------------- HAProxy

#[test]
fn the_shipped_haproxy_configuration_is_valid() {
    let Some(haproxy) = tool("the_shipped_haproxy_configuration_is_valid", "haproxy") else {
        return;
    };
    let config = shipped("haproxy.cfg");
    let out = Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&config)
        .output()
        .expect("run haproxy -c");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "haproxy rejects {}:\n{said}",
        config.display()
    );
    assert!(
        !said.contains("[WARNING]") && !said.contains("[ALERT]"),
        "haproxy warns about {}:\n{said}",
        config.display()
    );
}

/// The shipped haproxy.cfg on loopback: `listen` for clients, `stats` for
/// the stats page, the hosts at `ports`; without the process settings that
/// need root (the chroot, dropping to the haproxy user).
fn haproxy_copy(listen: u16, stats: u16, ports: &[u16; 3]) -> String {
    let file = "haproxy.cfg";
    let text = std::fs::read_to_string(shipped(file)).unwrap();
    let text = substitute(
        &text,
        "bind :80\n",
        &format!("bind 127.0.0.1:{listen}\n"),
        file,
    );
    let text = substitute(
        &text,
        "bind 127.0.0.1:8404\n",
        &format!("bind 127.0.0.1:{stats}\n"),
        file,
    );
    at_hosts(text, ports, file)
        .lines()
        .filter(|line| {
            !matches!(
                line.split_whitespace().next(),
                Some("chroot" | "user" | "group")
            )
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Each server of backend `web` and its status (`UP`, `DOWN`, `UP 1/2`...),
/// from the stats page's CSV.
async fn haproxy_servers(client: &reqwest::Client, stats: u16) -> Option<BTreeMap<String, String>> {
    let csv = client
        .get(format!("http://127.0.0.1:{stats}/stats;csv"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let column = |name: &str| header.iter().position(|c| *c == name);
    let (proxy, server, status) = (column("pxname")?, column("svname")?, column("status")?);
    let servers: BTreeMap<String, String> = lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|fields| {
            fields.len() > status
                && fields[proxy] == "web"
                && !matches!(fields[server], "FRONTEND" | "BACKEND")
        })
        .map(|fields| (fields[server].to_owned(), fields[status].to_owned()))
        .collect();
    (!servers.is_empty()).then_some(servers)
}

/// HAProxy sees `servers` (and no others) with exactly the given statuses.
async fn haproxy_shows(
    client: &reqwest::Client,
    stats: u16,
    wanted: &[(&str, &str)],
) -> Option<()> {
    let servers = haproxy_servers(client, stats).await?;
    wanted
        .iter()
        .all(|(server, status)| servers.get(*server).map(String::as_str) == Some(*status))
        .then_some(())
}

/// Sends `n` requests through the balancer on `port`; each must succeed.
/// Returns the hosts that answered.
async fn all_succeed(client: &reqwest::Client, port: u16, n: usize) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    for i in 0..n {
        let answer = get(client, port, "/").await;
        let Some((200, host)) = answer else {
            panic!("request {i} through the balancer failed: {answer:?}");
        };
        hosts.insert(host);
    }
    hosts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_takes_out_a_host_failing_its_health_check_and_a_dead_one_and_keeps_serving() {
    init_tracing();
    let test = "haproxy_takes_out_a_host_failing_its_health_check_and_a_dead_one_and_keeps_serving";
    let Some(haproxy) = tool(test, "haproxy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    // production-3 answers /health 503, as a host in maintenance does.
    let mut first = host(HOSTS[0].0, ports[0], true).await;
    let _second = host(HOSTS[1].0, ports[1], true).await;
    let _third = host(HOSTS[2].0, ports[2], false).await;
    let (listen, stats) = (free_port(), free_port());
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, haproxy_copy(listen, stats, &ports)).unwrap();
    let mut balancer = start(
        &haproxy,
        &["-db", "-f", config.to_str().unwrap()],
        &dir.path().join("haproxy.log"),
    );
    let client = http();

    // production-3 drops out on its checks; the others stay in, and every
    // request meanwhile succeeds.
    poll("production-3 taken out on its 503s", &mut balancer, || {
        let client = client.clone();
        async move {
            let answer = get(&client, listen, "/").await;
            assert!(
                matches!(answer, None | Some((200, _))),
                "a request failed: {answer:?}"
            );
            haproxy_shows(
                &client,
                stats,
                &[
                    ("production-1", "UP"),
                    ("production-2", "UP"),
                    ("production-3", "DOWN"),
                ],
            )
            .await
        }
    })
    .await;
    let served = all_succeed(&client, listen, 20).await;
    assert_eq!(
        served,
        BTreeSet::from(["production-1".to_owned(), "production-2".to_owned()]),
        "requests went elsewhere than the two healthy hosts"
    );

    // production-1 dies: requests keep succeeding (a refused connection is
    // tried on another host) until its checks take it out.
    first.kill();
    let mut requests = 0;
    poll("production-1 taken out once dead", &mut balancer, || {
        requests += 1;
        let client = client.clone();
        async move {
            let answer = get(&client, listen, "/").await;
            assert_eq!(
                answer,
                Some((200, "production-2".to_owned())),
                "a request failed or went to a host that is out"
            );
            haproxy_shows(&client, stats, &[("production-1", "DOWN")]).await
        }
    })
    .await;
    eprintln!("{requests} requests succeeded while production-1's checks failed");
    let served = all_succeed(&client, listen, 10).await;
    assert_eq!(served, BTreeSet::from(["production-2".to_owned()]));

    // production-1 answers again: its checks put it back.
    let _first = host(HOSTS[0].0, ports[0], true).await;
    poll("production-1 back in", &mut balancer, || {
        let client = client.clone();
        async move {
            all_succeed(&client, listen, 1).await;
            haproxy_shows(&client, stats, &[("production-1", "UP")]).await
        }
    })
    .await;
    let served = all_succeed(&client, listen, 10).await;
    assert!(served.contains("production-1"), "{served:?}");
    balancer.assert_alive();
}

// ------------------------------------------------------------------ nginx

/// A minimal nginx.conf around the http-level file `include`: every path
/// nginx writes (pid, logs, temporary files) in `dir`, one process in the
/// foreground, so neither root nor the system's paths are needed.
fn nginx_main(dir: &Path, include: &Path) -> PathBuf {
    let d = dir.display();
    let main = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {};\n}}\n",
        include.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, main).unwrap();
    path
}

/// nginx's arguments to run (or with `-t`, test) `main`, prefix and startup
/// error log in `dir`.
fn nginx_args(dir: &Path, main: &Path) -> Vec<String> {
    vec![
        "-p".into(),
        format!("{}/", dir.display()),
        "-e".into(),
        dir.join("error.log").display().to_string(),
        "-c".into(),
        main.display().to_string(),
    ]
}

#[test]
fn the_shipped_nginx_configuration_is_valid() {
    let Some(nginx) = tool("the_shipped_nginx_configuration_is_valid", "nginx") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let main = nginx_main(dir.path(), &shipped("nginx.conf"));
    let out = Command::new(nginx)
        .arg("-t")
        .args(nginx_args(dir.path(), &main))
        .output()
        .expect("run nginx -t");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "nginx rejects deploy/loadbalancer/nginx.conf:\n{said}"
    );
    assert!(
        !said.contains("[warn]") && !said.contains("[emerg]"),
        "nginx warns about deploy/loadbalancer/nginx.conf:\n{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_retries_a_dead_host_and_a_503_on_another_and_keeps_serving() {
    init_tracing();
    let test = "nginx_retries_a_dead_host_and_a_503_on_another_and_keeps_serving";
    let Some(nginx) = tool(test, "nginx") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let mut first = host(HOSTS[0].0, ports[0], true).await;
    let _second = host(HOSTS[1].0, ports[1], true).await;
    // production-3 answers /health 503, as a host in maintenance answers
    // every request.
    let _third = host(HOSTS[2].0, ports[2], false).await;
    let listen = free_port();
    let file = "nginx.conf";
    let text = std::fs::read_to_string(shipped(file)).unwrap();
    let text = substitute(
        &text,
        "listen 80;",
        &format!("listen 127.0.0.1:{listen};"),
        file,
    );
    let copy = dir.path().join("ferry-production.conf");
    std::fs::write(&copy, at_hosts(text, &ports, file)).unwrap();
    let main = nginx_main(dir.path(), &copy);
    let mut balancer = start(
        &nginx,
        &nginx_args(dir.path(), &main)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &dir.path().join("nginx.log"),
    );
    let client = http();
    poll("nginx answering", &mut balancer, || {
        let client = client.clone();
        async move { get(&client, listen, "/").await.filter(|(s, _)| *s == 200) }
    })
    .await;
    let served = all_succeed(&client, listen, 12).await;
    assert_eq!(
        served.len(),
        3,
        "round robin over the three hosts: {served:?}"
    );

    // production-3's 503 is retried on another host: the client never sees it.
    for i in 0..12 {
        let answer = get(&client, listen, "/health").await;
        assert!(
            matches!(&answer, Some((200, host)) if host != "production-3"),
            "request {i} for /health: {answer:?}"
        );
    }

    // production-1 dies: every request still succeeds, on the others.
    first.kill();
    let served = all_succeed(&client, listen, 30).await;
    assert!(!served.contains("production-1"), "{served:?}");
    balancer.assert_alive();
}
