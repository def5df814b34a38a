//! The real `ferry-agent` binary as its own process, as it runs in
//! production: for benchmarks that measure its latency or its footprint.

use std::path::{Path, PathBuf};

use futures::StreamExt;

use crate::events::subscribe_heartbeats;
use crate::{bin, System, WAIT};

/// A `ferry-agent` process for the `dev` environment of `system`, killed on drop.
pub struct AgentProcess {
    child: std::process::Child,
    binary: PathBuf,
    config: PathBuf,
    /// Watches heartbeats across restarts (the controller's user on a
    /// server with permissions).
    client: async_nats::Client,
}

impl AgentProcess {
    /// Writes a configuration for `dev` with `services_toml` (the
    /// `[services...]` tables), starts the agent on it and waits for its
    /// first heartbeat.
    pub async fn start(system: &System, services_toml: &str) -> AgentProcess {
        AgentProcess::start_binary(system, &bin("ferry-agent"), services_toml).await
    }

    /// [`AgentProcess::start`] with another build of the agent (say, the
    /// static one the images ship).
    pub async fn start_binary(system: &System, binary: &Path, services_toml: &str) -> AgentProcess {
        let config = system.dir.path().join("agent-dev.toml");
        std::fs::write(
            &config,
            system.agent_toml("dev", &format!("\n{services_toml}")),
        )
        .unwrap();
        let client = system.nats.client().await;
        let mut heartbeats = subscribe_heartbeats(&client, "dev").await;
        // Owned before the wait, so a failed wait still stops it on drop.
        let agent = AgentProcess {
            child: spawn(binary, &config),
            binary: binary.to_path_buf(),
            config,
            client,
        };
        tokio::time::timeout(WAIT, heartbeats.next())
            .await
            .expect("agent heartbeat");
        agent
    }

    /// SIGKILL: the agent gets no chance to stop anything.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the agent again on the same configuration and state, waiting
    /// for its first heartbeat.
    pub async fn start_again(&mut self) {
        let mut heartbeats = subscribe_heartbeats(&self.client, "dev").await;
        self.child = spawn(&self.binary, &self.config);
        tokio::time::timeout(WAIT, heartbeats.next())
            .await
            .expect("agent heartbeat after the restart");
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn spawn(binary: &Path, config: &Path) -> std::process::Child {
    std::process::Command::new(binary)
        .arg("--config")
        .arg(config)
        // FERRY_E2E_AGENT_LOG widens the agent's log when a test needs a look inside.
        .env(
            "RUST_LOG",
            std::env::var("FERRY_E2E_AGENT_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

impl Drop for AgentProcess {
    /// SIGTERM, so the agent stops its replicas; SIGKILL if it has not
    /// exited within its grace.
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
