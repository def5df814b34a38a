//! What the fleet benchmark (`benches/fleet.rs`) needs of the harness: many
//! real `ferry-agent` processes of one environment, one per host, started in
//! batches and stopped all at once; the open-files limit they need; a
//! process's CPU time from /proc and its RSS sampled over time; and the
//! benchmark's own executable re-run as a helper process.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::event::AgentEvent;
use ferry_protocol::Envelope;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::events::subscribe_heartbeats;
use crate::footprint::rss_bytes;
use crate::{bin, System, WAIT};

/// Variables of the benchmark's own settings (`FERRY_FLEET_AGENTS`, ...):
/// not handed to the agents, whose `FERRY_*` overrides would read them.
const BENCH_VARS: &str = "FERRY_FLEET_";

/// The host name of the fleet's `index`th agent: `h-<index>`.
pub fn host_name(index: usize) -> String {
    format!("h-{index}")
}

/// One agent of an [`AgentFleet`].
struct FleetAgent {
    host: String,
    child: Child,
    log: PathBuf,
}

/// `count` `ferry-agent` processes of one environment, hosts
/// `h-0`..`h-<count-1>`, each with its own state directory; all are sent
/// SIGTERM at once on drop, and killed if they have not exited within
/// [`WAIT`].
pub struct AgentFleet {
    agents: Vec<FleetAgent>,
}

impl AgentFleet {
    /// Writes one configuration for `env` (the system's agent settings, then
    /// `rest`: more settings and the `[services...]` tables), starts `count`
    /// agents on it, `batch` at a time, each given its host (`FERRY_HOST`)
    /// and state directory (`FERRY_STATE_DIR`, under the system's
    /// directory) in its environment, and returns once every one has sent a
    /// heartbeat (an agent's first heartbeat follows its command consumer's
    /// creation). An agent that exits meanwhile fails the start with the end
    /// of its log.
    pub async fn start(
        system: &System,
        env: &str,
        count: usize,
        batch: usize,
        rest: &str,
    ) -> AgentFleet {
        let root = system.dir.path().join(format!("fleet-{env}"));
        std::fs::create_dir_all(&root).unwrap();
        let config = root.join("agent.toml");
        std::fs::write(&config, system.agent_toml(env, rest)).unwrap();
        let client = system.nats.client().await;
        let mut heartbeats = subscribe_heartbeats(&client, env).await;
        let mut fleet = AgentFleet {
            agents: Vec::with_capacity(count),
        };
        let mut heard = BTreeSet::new();
        for first in (0..count).step_by(batch.max(1)) {
            for index in first..(first + batch.max(1)).min(count) {
                let host = host_name(index);
                let dir = root.join(&host);
                std::fs::create_dir_all(&dir).unwrap();
                let log = dir.join("agent.log");
                let child = spawn_agent(&config, &host, &dir, &log);
                fleet.agents.push(FleetAgent { host, child, log });
            }
            let started = fleet.agents.len();
            let deadline = tokio::time::Instant::now() + 2 * WAIT;
            while heard.len() < started {
                match tokio::time::timeout(Duration::from_secs(1), heartbeats.next()).await {
                    Ok(Some(message)) => {
                        if let Ok(Envelope {
                            data: AgentEvent::Heartbeat(heartbeat),
                            ..
                        }) = Envelope::<AgentEvent>::decode(&message.payload)
                        {
                            if let Some(host) = heartbeat.host_name {
                                heard.insert(host.to_string());
                            }
                        }
                    }
                    Ok(None) => panic!("heartbeat subscription closed"),
                    Err(_) => fleet.check_running(),
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} of {started} agents sent a heartbeat within {:?}; silent: {:?}",
                    heard.len(),
                    2 * WAIT,
                    fleet.silent(&heard)
                );
            }
        }
        fleet
    }

    /// How many agents it runs.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether it runs none.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The agents' process ids, in host order.
    pub fn pids(&self) -> Vec<u32> {
        self.agents.iter().map(|a| a.child.id()).collect()
    }

    /// Fails with the end of its log if an agent has exited.
    pub fn check_running(&mut self) {
        for agent in &mut self.agents {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!(
                    "agent {} exited ({status}); the end of its log:\n{}",
                    agent.host,
                    log_tail(&agent.log)
                );
            }
        }
    }

    fn silent(&self, heard: &BTreeSet<String>) -> Vec<&str> {
        self.agents
            .iter()
            .map(|a| a.host.as_str())
            .filter(|h| !heard.contains(*h))
            .take(20)
            .collect()
    }
}

fn spawn_agent(config: &Path, host: &str, state_dir: &Path, log: &Path) -> Child {
    let mut command = std::process::Command::new(bin("ferry-agent"));
    command
        .arg("--config")
        .arg(config)
        .env("FERRY_HOST", host)
        .env("FERRY_STATE_DIR", state_dir)
        // FERRY_E2E_AGENT_LOG widens the agents' logs when a look inside is needed.
        .env(
            "RUST_LOG",
            std::env::var("FERRY_E2E_AGENT_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with(BENCH_VARS) {
            command.env_remove(name);
        }
    }
    command.spawn().unwrap()
}

/// The last 2 KiB of a log file.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut start = text.len().saturating_sub(2048);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

impl Drop for AgentFleet {
    /// SIGTERM to every agent first, so they drain side by side, then waits
    /// for them all; SIGKILL for any still running after [`WAIT`].
    fn drop(&mut self) {
        for agent in &self.agents {
            if let Ok(pid) = i32::try_from(agent.child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = std::time::Instant::now() + WAIT;
        let mut running: Vec<&mut FleetAgent> = self.agents.iter_mut().collect();
        while !running.is_empty() && std::time::Instant::now() < deadline {
            running.retain_mut(|a| matches!(a.child.try_wait(), Ok(None)));
            std::thread::sleep(Duration::from_millis(20));
        }
        for agent in running {
            let _ = agent.child.kill();
            let _ = agent.child.wait();
        }
    }
}

/// Makes sure this process, and so every process it starts (nats-server,
/// the agents), may open `needed` files: raises the soft limit to the hard
/// one (`prlimit`) when it is lower; fails, saying what to do, when the hard
/// limit is lower too.
pub fn ensure_open_files(needed: u64) {
    let (soft, hard) = open_files_limit();
    if soft >= needed {
        return;
    }
    if hard >= needed {
        let raised = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
        if !raised.is_ok_and(|s| s.success()) {
            eprintln!("prlimit could not raise the open-files limit from {soft} to {hard}");
        }
    }
    let (soft, hard) = open_files_limit();
    assert!(
        soft >= needed,
        "{needed} open files are needed, the limit is {soft} (hard {hard}): raise it, e.g. `ulimit -n {needed}`"
    );
}

/// This process's open-files limit, soft and hard (`/proc/self/limits`).
fn open_files_limit() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let value = |v: Option<&str>| match v {
        Some("unlimited") => u64::MAX,
        v => v.and_then(|v| v.parse().ok()).unwrap(),
    };
    let mut fields = line["Max open files".len()..].split_whitespace();
    (value(fields.next()), value(fields.next()))
}

/// A process's resident memory sampled at a fixed interval until stopped.
pub struct RssSampler {
    samples: Arc<Mutex<Vec<u64>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    /// Samples `pid`'s RSS now and then every `every`.
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let samples = Arc::new(Mutex::new(vec![rss_bytes(pid)]));
        let stop = CancellationToken::new();
        let task = {
            let (samples, stop) = (samples.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => samples.lock().unwrap().push(rss_bytes(pid)),
                    }
                }
            })
        };
        RssSampler {
            samples,
            stop,
            task,
        }
    }

    /// Stops sampling; every sample, bytes, in order.
    pub async fn stop(self) -> Vec<u64> {
        self.stop.cancel();
        self.task.await.unwrap();
        let samples = self.samples.lock().unwrap();
        samples.clone()
    }
}

/// `pid`'s anonymous resident memory (RssAnon: heap, stacks), bytes.
pub fn anon_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("RssAnon in /proc/{pid}/status"))
        * 1024
}

/// `pid`'s CPU time so far (user and system, all its threads), seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the parenthesised command name (which may hold
    // spaces): state is the first of them, utime the 12th, stime the 13th.
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks_per_second()
}

/// The kernel's clock ticks per second for /proc times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The process id of a child of this process whose command name is `name`
/// (such as the harness's `nats-server`), if there is one.
pub fn child_named(name: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                return false;
            };
            let parent = stat[close + 1..]
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            &stat[open + 1..close] == name && parent == Some(me)
        })
}

/// The running executable (a benchmark) re-run with `role_var` set to a
/// role, so a part of the measurement runs in a process of its own; ready
/// once it printed `ready`; killed on drop. Its standard input is a pipe
/// that closes when this process ends however it ends, so a role can stop
/// by itself then ([`until_parent_exits`]).
pub struct ReExec(Child);

impl ReExec {
    /// Starts this executable with `role_var=role` and `env`, and waits up
    /// to `timeout` for its first line, which must be `ready`.
    pub async fn start(
        role_var: &str,
        role: &str,
        env: &[(&str, String)],
        timeout: Duration,
    ) -> ReExec {
        use std::io::BufRead;
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .env(role_var, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let process = ReExec(child);
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        });
        let line = tokio::time::timeout(timeout, line)
            .await
            .unwrap_or_else(|_| panic!("the {role} process was not ready within {timeout:?}"))
            .unwrap()
            .unwrap();
        assert_eq!(line.trim(), "ready", "the {role} process did not start");
        process
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// Returns when the process that started this one as a [`ReExec`] role has
/// ended (its end of this process's standard input closed).
pub async fn until_parent_exits() {
    let _ =
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await;
}

impl Drop for ReExec {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
