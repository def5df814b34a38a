//! The process runtime: each replica is a child process of the agent, started
//! from the service's command template with no shell, a cleared environment
//! and a free loopback port in `$PORT`.
//!
//! Replicas do not outlive the agent: they are its children and are stopped
//! when it shuts down; a restarted agent restores them from its state file.
//! An agent that was killed (SIGKILL, OOM) could not stop them: the next one
//! finds those orphans by their stdout, still open on this service's log file
//! in this agent's state directory, and stops them before restoring.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_protocol::command::ReleaseSpec;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use super::{
    ferry_env, ExitInfo, Progress, ReplicaContext, ReplicaHandle, ReplicaRuntime, RuntimeError,
};
use crate::config::RuntimeKind;

/// Variables passed through from the agent's own environment; everything else
/// a replica sees comes from configuration and the release.
const INHERITED_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// Runs replicas as child processes.
#[derive(Debug, Default)]
pub struct ProcessRuntime;

#[async_trait]
impl ReplicaRuntime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    async fn prepare(
        &self,
        ctx: &ReplicaContext,
        release: &ReleaseSpec,
        _progress: &dyn Progress,
    ) -> Result<(), RuntimeError> {
        let program = program(ctx, release, 0);
        let bad = |detail: String| RuntimeError::Artifact {
            artifact: release.artifact.clone(),
            detail,
        };
        let path = Path::new(&program);
        if !path.is_absolute() {
            return Err(bad(format!(
                "the program {program:?} must be an absolute path"
            )));
        }
        // One stat of a local file: quicker inline than a hop to the
        // blocking pool, which a deploy would wait on before starting.
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("{program}: {e}")))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(bad(format!("{program} is not an executable file")));
        }
        Ok(())
    }

    /// Nothing is adopted (a replica's exit can only be watched by its
    /// parent); orphans of a killed agent are stopped so the restore starts
    /// from a clean slate.
    async fn adopt(
        &self,
        ctx: &ReplicaContext,
        _release: Option<&ReleaseSpec>,
    ) -> Result<Vec<ReplicaHandle>, RuntimeError> {
        let log = log_path(&ctx.log_dir, ctx.service.name.as_str());
        let marks = [
            format!("FERRY_ENVIRONMENT={}", ctx.environment),
            format!("FERRY_SERVICE={}", ctx.service.name),
        ];
        let orphans = tokio::task::spawn_blocking(move || orphans_of(&log, &marks))
            .await
            .unwrap_or_default();
        for pid in orphans {
            tracing::warn!(service = %ctx.service.name, pid, "stopping a replica left running by an agent that did not shut down");
            stop_orphan(pid, ctx.service.stop_timeout).await;
        }
        Ok(Vec::new())
    }

    async fn start(
        &self,
        ctx: &ReplicaContext,
        release: &ReleaseSpec,
        replica_id: &str,
    ) -> Result<ReplicaHandle, RuntimeError> {
        let fail = |detail: String| RuntimeError::Start {
            replica: replica_id.to_owned(),
            detail,
        };
        let port = free_port().map_err(|e| fail(format!("no free port: {e}")))?;
        let args: Vec<String> = ctx
            .service
            .command
            .iter()
            .map(|a| substitute(a, ctx, release, port))
            .collect();
        let Some((program, rest)) = args.split_first() else {
            return Err(fail("empty command".into()));
        };
        let log = open_log(&ctx.log_dir, ctx.service.name.as_str())
            .map_err(|e| fail(format!("log file: {e}")))?;
        let log_err = log
            .try_clone()
            .map_err(|e| fail(format!("log file: {e}")))?;

        let mut command = Command::new(program);
        command
            .args(rest)
            .env_clear()
            .envs(
                INHERITED_ENV
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .envs(&ctx.service.env)
            .envs(&release.env)
            .envs(ferry_env(ctx, release, replica_id, port))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // A replica never outlives an agent that drops it without stopping it.
            .kill_on_drop(true);
        // fork/exec holds the calling thread until the child has exec'd
        // (about a millisecond): on the blocking pool it stalls no async
        // worker (the proxy, the NATS connection), and a deploy's replicas
        // start side by side.
        let child = tokio::task::spawn_blocking(move || command.spawn())
            .await
            .map_err(|e| fail(format!("{program}: the spawn did not finish: {e}")))?
            .map_err(|e| fail(format!("{program}: {e}")))?;

        let (exit_tx, exit_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = mpsc::channel(1);
        tokio::spawn(supervise(child, stop_rx, exit_tx));
        Ok(ReplicaHandle::new(
            replica_id.to_owned(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            exit_rx,
            stop_tx,
        ))
    }
}

fn program(ctx: &ReplicaContext, release: &ReleaseSpec, port: u16) -> String {
    ctx.service
        .command
        .first()
        .map(|p| substitute(p, ctx, release, port))
        .unwrap_or_default()
}

/// Substitutes placeholders in one argument. Values become whole arguments of
/// `execve`, never shell text, so metacharacters in them are inert.
fn substitute(template: &str, ctx: &ReplicaContext, release: &ReleaseSpec, port: u16) -> String {
    template
        .replace("{artifact}", &release.artifact)
        .replace("{port}", &port.to_string())
        .replace("{version}", release.version.as_str())
        .replace("{service}", ctx.service.name.as_str())
        .replace("{environment}", ctx.environment.as_str())
}

/// Lowest port handed to replicas.
const REPLICA_PORTS_FROM: u16 = 20_000;

/// The range the kernel draws connections' source ports from.
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(str::parse::<u16>);
            Some((bounds.next()?.ok()?, bounds.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999))
}

/// How long a port handed to a replica is not handed out again: between the
/// draw and the replica's bind the OS sees the port free, and replicas are
/// spawned side by side, so a second draw in that window could return it.
const PORT_HELD_FOR: Duration = Duration::from_secs(10);

/// Ports handed out within the last [`PORT_HELD_FOR`], oldest first.
static PORTS_HANDED_OUT: Mutex<VecDeque<(u16, Instant)>> = Mutex::new(VecDeque::new());

/// A port the OS says is free now and this agent has not just handed to
/// another replica, below the ephemeral range where it can: a health check
/// connecting to a replica that has not bound its port yet could otherwise
/// be given that very port as its own source port and connect to itself
/// (TCP simultaneous open), taking the port from the replica, which then
/// exits with "address in use". Another process could still take the port
/// before the replica binds; the replica then fails its health checks and
/// is reported.
fn free_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    let mut handed_out = PORTS_HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    while handed_out
        .front()
        .is_some_and(|(_, at)| now.duration_since(*at) >= PORT_HELD_FOR)
    {
        handed_out.pop_front();
    }
    let (low, _) = ephemeral_ports();
    if let Some(span) = low.checked_sub(REPLICA_PORTS_FROM).filter(|s| *s >= 1_000) {
        for _ in 0..64 {
            // A fresh RandomState is freshly keyed: a different draw each time.
            let draw = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            let port = REPLICA_PORTS_FROM + u16::try_from(draw % u64::from(span)).unwrap_or(0);
            if is_held(&handed_out, port) {
                continue;
            }
            if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                let port = listener.local_addr()?.port();
                handed_out.push_back((port, now));
                return Ok(port);
            }
        }
    }
    // The kernel's own draw: it does not hand out a port that is bound, but
    // a port released by a draw above can come back; try a few.
    for _ in 0..16 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if !is_held(&handed_out, port) {
            handed_out.push_back((port, now));
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "every port drawn was just handed to another replica",
    ))
}

/// Whether `port` was handed out within the last [`PORT_HELD_FOR`].
fn is_held(handed_out: &VecDeque<(u16, Instant)>, port: u16) -> bool {
    handed_out.iter().any(|(held, _)| *held == port)
}

fn log_path(dir: &Path, service: &str) -> PathBuf {
    dir.join(format!("{service}.log"))
}

fn open_log(dir: &Path, service: &str) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir, service))
}

/// Live processes, other than this agent's own children, whose stdout is the
/// service's log file and whose environment names the service: replicas an
/// earlier agent of this state directory started and never stopped.
fn orphans_of(log: &Path, marks: &[String]) -> Vec<i32> {
    let Ok(log) = std::fs::canonicalize(log) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let proc_dir = PathBuf::from(format!("/proc/{pid}"));
            let stdout_is_log = std::fs::read_link(proc_dir.join("fd/1")).is_ok_and(|p| p == log);
            stdout_is_log
                && proc_status(pid).is_some_and(|(state, parent)| state != 'Z' && parent != me)
                && std::fs::read(proc_dir.join("environ")).is_ok_and(|environ| {
                    marks
                        .iter()
                        .all(|mark| environ.split(|b| *b == 0).any(|var| var == mark.as_bytes()))
                })
        })
        .collect()
}

/// State letter and parent pid of `pid`, from /proc/<pid>/stat (fields after
/// the parenthesised command name, which may hold spaces).
fn proc_status(pid: i32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// SIGTERM, then SIGKILL after `grace`; it is not our child, so its end is
/// seen in /proc, not through wait().
async fn stop_orphan(pid: i32, grace: Duration) {
    let target = Pid::from_raw(pid);
    if kill(target, Signal::SIGTERM).is_err() {
        return;
    }
    let gone = || proc_status(pid).is_none_or(|(state, _)| state == 'Z');
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if gone() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = kill(target, Signal::SIGKILL);
}

async fn supervise(
    mut child: Child,
    mut stop: mpsc::Receiver<Duration>,
    exit: watch::Sender<Option<ExitInfo>>,
) {
    let info = tokio::select! {
        status = child.wait() => describe(status, false),
        grace = stop.recv() => {
            let grace = grace.unwrap_or(Duration::ZERO);
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                // ESRCH means it already exited; wait() below collects it.
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(status) => describe(status, true),
                Err(_) => {
                    let _ = child.start_kill();
                    describe(child.wait().await, true)
                }
            }
        }
    };
    let _ = exit.send(Some(info));
}

fn describe(status: std::io::Result<ExitStatus>, requested: bool) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitInfo {
                code: Some(code),
                detail: format!("exited with code {code}"),
                requested,
            },
            (None, Some(signal)) => ExitInfo {
                code: None,
                detail: format!("killed by signal {signal}"),
                requested,
            },
            (None, None) => ExitInfo {
                code: None,
                detail: "ended".into(),
                requested,
            },
        },
        Err(e) => ExitInfo {
            code: None,
            detail: format!("could not be waited for: {e}"),
            requested,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replicas spawned side by side each draw a port that is free to the
    /// OS until the replica binds it: a draw must not repeat one handed out
    /// moments before (2,000 draws from the ~12,000 ports below the
    /// ephemeral range would repeat one almost surely without that).
    #[test]
    fn a_port_just_handed_to_a_replica_is_not_handed_out_again() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            let port = free_port().unwrap();
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }

    #[test]
    fn replica_ports_are_free_and_below_the_ephemeral_range() {
        let (low, high) = ephemeral_ports();
        assert!(low <= high, "{low}..{high}");
        for _ in 0..20 {
            let port = free_port().unwrap();
            if low >= REPLICA_PORTS_FROM + 1_000 {
                assert!(
                    (REPLICA_PORTS_FROM..low).contains(&port),
                    "{port} is not below {low}"
                );
            }
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("still free");
        }
    }
}
