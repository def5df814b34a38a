//! Runtimes that start and stop one replica ([`ReplicaRuntime`]: a child
//! process, [`process`]; a container through the Docker API, [`docker`]),
//! and what every runtime shares: [`RuntimeError`] (defined in `error.rs`),
//! [`Progress`], [`Replacement`]. What the executor drives is a
//! `ServiceBackend` (in `backend.rs`), one level up; which backend a
//! service gets is `runtime_registry.rs`.

pub mod docker;
pub mod process;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use ferry_protocol::command::ReleaseSpec;
use ferry_protocol::event::ReplicaUsage;
use ferry_protocol::{EnvName, Version};
use tokio::sync::{mpsc, watch};

use crate::config::{RuntimeKind, ServiceConfig};
pub use crate::error::RuntimeError;

/// How a replica ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, if it exited by itself.
    pub code: Option<i32>,
    /// A sentence: "exited with code 3", "killed by signal 9".
    pub detail: String,
    /// Whether the agent asked it to stop.
    pub requested: bool,
}

/// A running replica, whatever the runtime.
#[derive(Debug)]
pub struct ReplicaHandle {
    /// Unique id: `<service>-<version>-<n>-<suffix>`.
    pub id: String,
    /// Where it serves HTTP.
    pub address: SocketAddr,
    exit: watch::Receiver<Option<ExitInfo>>,
    stop: mpsc::Sender<Duration>,
}

impl ReplicaHandle {
    /// Built by a runtime: `exit` turns `Some` when the replica has ended;
    /// a message on `stop` asks it to end within the given grace period.
    pub fn new(
        id: String,
        address: SocketAddr,
        exit: watch::Receiver<Option<ExitInfo>>,
        stop: mpsc::Sender<Duration>,
    ) -> Self {
        ReplicaHandle {
            id,
            address,
            exit,
            stop,
        }
    }

    /// How it ended, if it has.
    pub fn exited(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }

    /// Stops it (graceful, then forced after `grace`) and waits until it has ended.
    pub async fn stop(&self, grace: Duration) -> ExitInfo {
        // A closed channel means the replica's supervisor already finished.
        let _ = self.stop.send(grace).await;
        let mut exit = self.exit.clone();
        loop {
            if let Some(info) = exit.borrow_and_update().clone() {
                return info;
            }
            if exit.changed().await.is_err() {
                return exit.borrow().clone().unwrap_or(ExitInfo {
                    code: None,
                    detail: "replica supervisor ended".into(),
                    requested: true,
                });
            }
        }
    }
}

/// What a runtime needs to know to start a replica of a service.
#[derive(Clone, Debug)]
pub struct ReplicaContext {
    /// The agent's environment.
    pub environment: EnvName,
    /// The service's configuration.
    pub service: ServiceConfig,
    /// Where replica output goes.
    pub log_dir: PathBuf,
}

/// The variables ferry gives every replica, whatever the runtime. Runtimes
/// set them after the configuration's and the release's own, so neither can
/// change what a replica believes it is or where it listens.
pub fn ferry_env(
    ctx: &ReplicaContext,
    release: &ReleaseSpec,
    replica_id: &str,
    port: u16,
) -> [(&'static str, String); 5] {
    [
        ("PORT", port.to_string()),
        ("FERRY_ENVIRONMENT", ctx.environment.to_string()),
        ("FERRY_SERVICE", ctx.service.name.to_string()),
        ("FERRY_VERSION", release.version.to_string()),
        ("FERRY_REPLICA", replica_id.to_owned()),
    ]
}

/// Starts and stops single replicas.
#[async_trait]
pub trait ReplicaRuntime: Send + Sync + 'static {
    /// Which runtime this is.
    fn kind(&self) -> RuntimeKind;

    /// Checks that `release` can run here (fetching it if the runtime can),
    /// before anything running is touched.
    async fn prepare(
        &self,
        ctx: &ReplicaContext,
        release: &ReleaseSpec,
        progress: &dyn Progress,
    ) -> Result<(), RuntimeError>;

    /// Starts one replica; returns once it is started (not yet healthy).
    async fn start(
        &self,
        ctx: &ReplicaContext,
        release: &ReleaseSpec,
        replica_id: &str,
    ) -> Result<ReplicaHandle, RuntimeError>;

    /// Whether the runtime can be used now; an error says why not, so that
    /// commands fail with that reason rather than half-done.
    fn available(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Whether replicas keep running when the agent stops (containers do;
    /// child processes do not), so that the next agent can adopt them.
    fn replicas_outlive_agent(&self) -> bool {
        false
    }

    /// Takes over the running replicas of `release` that an earlier agent left
    /// (`None`: nothing is to run), and removes this service's other leftovers
    /// (other versions, ended replicas). The handles are not health-checked yet.
    async fn adopt(
        &self,
        _ctx: &ReplicaContext,
        _release: Option<&ReleaseSpec>,
    ) -> Result<Vec<ReplicaHandle>, RuntimeError> {
        Ok(Vec::new())
    }

    /// CPU and memory of the replicas `replica_ids` (ids, not handles, so the
    /// caller holds no lock while the engine samples). Runtimes that do not
    /// measure return nothing; a replica that cannot be measured is left out.
    async fn usage(&self, _ctx: &ReplicaContext, _replica_ids: &[String]) -> Vec<ReplicaUsage> {
        Vec::new()
    }
}

/// Where a backend reports the steps of a command in progress.
pub trait Progress: Send + Sync {
    /// One step: what is happening, for which version, how many replicas are ready.
    fn step(&self, step: &str, version: Option<&Version>, ready: u32, desired: u32);
}

/// A progress sink that drops everything (restores at start-up, tests).
pub struct NoProgress;

impl Progress for NoProgress {
    fn step(&self, _: &str, _: Option<&Version>, _: u32, _: u32) {}
}

/// How to replace what is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replacement {
    /// Start the new set beside the old, switch when healthy, then stop the old.
    HealthGated,
    /// Stop the old set first (a forced rollback away from a broken version).
    StopFirst,
}
