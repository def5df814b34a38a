//! The real `ferry-controller` binary as its own process, as it runs in
//! production: for benchmarks that measure its throughput or its footprint.

use std::time::Duration;

use crate::{bin, System, WAIT};

/// A `ferry-controller` process on `system`'s NATS with the system's signing
/// key, killed on drop.
pub struct ControllerProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl ControllerProcess {
    /// Writes a configuration for the pipeline `environments`, serving
    /// `/metrics` on `metrics_port`, starts the controller on it and waits
    /// until its API answers.
    pub async fn start(
        system: &System,
        environments: &[String],
        metrics_port: u16,
    ) -> ControllerProcess {
        let key_file = system.dir.path().join("controller-process.nk");
        std::fs::write(&key_file, system.controller_key.seed().unwrap()).unwrap();
        let credentials = match system.credentials("ferry-controller") {
            (Some(user), Some(file)) => format!(
                "nats_user = \"{user}\"\nnats_password_file = \"{}\"\n",
                file.display()
            ),
            _ => String::new(),
        };
        let environments: Vec<String> = environments.iter().map(|e| format!("\"{e}\"")).collect();
        let config = system.dir.path().join("controller.toml");
        std::fs::write(
            &config,
            format!(
                "nats_url = \"{}\"\n{credentials}signing_key_file = \"{}\"\nenvironments = [{}]\nagent_timeout = \"30s\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n",
                system.nats.url(),
                key_file.display(),
                environments.join(", "),
            ),
        )
        .unwrap();
        let log = system.dir.path().join("controller-process.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(bin("ferry-controller"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let controller = ControllerProcess { child, log };
        let deadline = tokio::time::Instant::now() + WAIT;
        while !system
            .cli_async(&["status", "--output", "json"])
            .await
            .status
            .success()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "controller API did not answer within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        controller
    }

    /// What the controller has logged so far (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The controller's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
