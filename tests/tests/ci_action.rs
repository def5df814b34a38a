//! The GitHub actions in deploy/github/actions/ as a runner would run them:
//! their scripts, with the variables the runner sets, install the `ferry`
//! binary from a release archive pinned by its SHA-256 and publish a
//! release through a real nats-server and controller to a real agent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_e2e::*;
use sha2::{Digest as _, Sha256};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn actions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/github/actions")
}

/// A release mirror as ferry's releases are laid out:
/// `<root>/v<version>/ferry-<version>-<target>.tar.gz` with `ferry` at its
/// top level. Returns the root's `file://` URL and the archive's SHA-256.
fn release_mirror(dir: &Path) -> (String, String) {
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::copy(bin("ferry"), staging.join("ferry")).unwrap();
    let release = dir.join("releases").join(format!("v{VERSION}"));
    std::fs::create_dir_all(&release).unwrap();
    let archive = release.join(format!("ferry-{VERSION}-{}.tar.gz", target()));
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&staging)
        .arg("ferry")
        .status()
        .unwrap();
    assert!(status.success(), "tar");
    let sha256 = hex::encode(Sha256::digest(std::fs::read(&archive).unwrap()));
    (format!("file://{}", dir.join("releases").display()), sha256)
}

fn target() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "aarch64-unknown-linux-musl",
        _ => "x86_64-unknown-linux-musl",
    }
}

fn runner_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "ARM64",
        _ => "X64",
    }
}

/// What a GitHub runner gives a step: its temp directory and command files.
struct Runner {
    temp: PathBuf,
    path_file: PathBuf,
    output_file: PathBuf,
    env_file: PathBuf,
}

impl Runner {
    fn new(dir: &Path) -> Runner {
        let temp = dir.join("runner-temp");
        std::fs::create_dir_all(&temp).unwrap();
        let runner = Runner {
            temp,
            path_file: dir.join("github-path"),
            output_file: dir.join("github-output"),
            env_file: dir.join("github-env"),
        };
        for file in [&runner.path_file, &runner.output_file, &runner.env_file] {
            std::fs::write(file, "").unwrap();
        }
        runner
    }

    /// `bash SCRIPT` as a composite action's step runs it.
    fn step(&self, script: &str, env: &[(&str, &str)]) -> Output {
        let mut command = Command::new("bash");
        command
            .arg(actions_dir().join(script))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("RUNNER_TEMP", &self.temp)
            .env("RUNNER_OS", "Linux")
            .env("RUNNER_ARCH", runner_arch())
            .env("GITHUB_PATH", &self.path_file)
            .env("GITHUB_OUTPUT", &self.output_file)
            .env("GITHUB_ENV", &self.env_file)
            .env("GITHUB_ACTOR", "octocat")
            .env("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567");
        command.envs(env.iter().copied());
        command.output().unwrap()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output_file).unwrap()
    }

    /// Entries of the runner's temp directory whose name starts with `prefix`.
    fn temp_entries(&self, prefix: &str) -> Vec<PathBuf> {
        std::fs::read_dir(&self.temp)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .collect()
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn install(runner: &Runner, url: &str, sha256: &str) -> Output {
    runner.step(
        "setup-ferry/install-ferry.sh",
        &[
            ("FERRY_INSTALL_VERSION", VERSION),
            ("FERRY_INSTALL_SHA256", sha256),
            ("FERRY_INSTALL_RELEASES_URL", url),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ferry_release_action_installs_the_pinned_ferry_and_publishes_a_release_dev_serves() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    let dir = system.dir.path().to_owned();
    let (url, sha256) = release_mirror(&dir);
    let runner = Runner::new(&dir);

    let installed = install(&runner, &url, &sha256);
    assert!(installed.status.success(), "{}", text(&installed));
    let ferry = runner
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("path=").map(PathBuf::from))
        .unwrap_or_else(|| panic!("no path output: {}", runner.output()));
    assert!(ferry.is_file(), "{}", ferry.display());
    let on_path = std::fs::read_to_string(&runner.path_file).unwrap();
    assert_eq!(on_path.trim(), ferry.parent().unwrap().to_str().unwrap());

    // The CI user's secret, as the workflow hands it to the action.
    let (user, password_file) = system.credentials("ferry-ci");
    let password = password_file
        .map(|f| std::fs::read_to_string(f).unwrap().trim().to_owned())
        .unwrap_or_default();
    let user = user.unwrap_or_default();
    let sample = bin("ferry-sample");
    let published = runner.step(
        "ferry-release/publish.sh",
        &[
            ("FERRY_BIN", ferry.to_str().unwrap()),
            ("FERRY_IN_SERVICE", "web"),
            ("FERRY_IN_VERSION", "1.0.0"),
            ("FERRY_IN_ARTIFACT", sample.to_str().unwrap()),
            ("FERRY_IN_HOTFIX", "false"),
            ("FERRY_IN_ENV", "GREETING=hello from CI\n\nLOG_LEVEL=info\n"),
            ("FERRY_IN_NATS_URL", &system.nats.url()),
            ("FERRY_IN_NATS_USER", &user),
            ("FERRY_IN_NATS_PASSWORD", &password),
            ("FERRY_IN_NATS_INBOX_PREFIX", "_INBOX_ferry_ci"),
        ],
    );
    assert!(published.status.success(), "{}", text(&published));
    if !password.is_empty() {
        assert!(
            !text(&published).contains(&password),
            "the NATS password was printed"
        );
    }
    assert!(
        runner.temp_entries("ferry-nats.").is_empty(),
        "the secret's directory outlived the step"
    );
    let output = runner.output();
    assert!(
        output.contains("result<<") && output.contains("\"sequence\""),
        "{output}"
    );

    wait_serving(port, "1.0.0", WAIT).await;
    let releases = system.cli(&["releases", "-s", "web", "--output", "json"]);
    assert!(releases.status.success(), "{}", text(&releases));
    let releases: serde_json::Value = serde_json::from_slice(&releases.stdout).unwrap();
    let release = &releases[0]["release"];
    assert_eq!(release["version"], "1.0.0");
    assert_eq!(release["author"], "octocat", "GITHUB_ACTOR by default");
    assert_eq!(
        release["commit"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(release["env"]["GREETING"], "hello from CI");
    assert_eq!(release["env"]["LOG_LEVEL"], "info");
    system.shutdown().await;
}

#[test]
fn the_install_refuses_an_archive_that_is_not_the_pinned_one() {
    let dir = tempfile::tempdir().unwrap();
    let (url, sha256) = release_mirror(dir.path());
    let runner = Runner::new(dir.path());
    let mut wrong = sha256.into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let out = install(&runner, &url, std::str::from_utf8(&wrong).unwrap());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not have the pinned SHA-256"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&runner.path_file).unwrap(), "");
    assert_eq!(runner.output(), "");
    for install_dir in runner.temp_entries("ferry-install.") {
        assert!(
            !install_dir.join("bin/ferry").exists(),
            "a refused archive was unpacked"
        );
    }

    let out = install(&runner, "http://example.com/releases", &"a".repeat(64));
    assert!(
        !out.status.success(),
        "plain http is refused: {}",
        text(&out)
    );
}

#[test]
fn setup_ferry_keeps_the_nats_secret_in_a_private_file_and_only_its_path_in_github_env() {
    let dir = tempfile::tempdir().unwrap();
    let runner = Runner::new(dir.path());
    let creds =
        "-----BEGIN NATS USER JWT-----\neyJ0eXAi.secret-jwt\n------END NATS USER JWT------\n";
    let out = runner.step(
        "setup-ferry/export-credentials.sh",
        &[
            ("FERRY_IN_NATS_URL", "tls://nats.example.com:4222"),
            ("FERRY_IN_NATS_CREDS", creds),
            ("FERRY_IN_NATS_INBOX_PREFIX", "_INBOX_ferry_cli"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("secret-jwt"), "the secret was printed");
    let env = std::fs::read_to_string(&runner.env_file).unwrap();
    assert!(
        !env.contains("secret-jwt"),
        "the secret is in GITHUB_ENV: {env}"
    );
    assert!(
        env.contains("FERRY_NATS_URL=tls://nats.example.com:4222\n"),
        "{env}"
    );
    assert!(
        env.contains("FERRY_NATS_INBOX_PREFIX=_INBOX_ferry_cli\n"),
        "{env}"
    );
    let path = env
        .lines()
        .find_map(|l| l.strip_prefix("FERRY_NATS_CREDS="))
        .unwrap_or_else(|| panic!("no FERRY_NATS_CREDS in {env}"));
    let file = Path::new(path);
    assert!(file.starts_with(&runner.temp), "{path}");
    assert_eq!(
        std::fs::read_to_string(file).unwrap().trim_end(),
        creds.trim_end()
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(file), 0o600, "the credentials file");
    assert_eq!(mode(file.parent().unwrap()), 0o700, "its directory");

    let out = runner.step(
        "setup-ferry/export-credentials.sh",
        &[
            ("FERRY_IN_NATS_CREDS", creds),
            ("FERRY_IN_NATS_USER", "ferry-cli"),
            ("FERRY_IN_NATS_PASSWORD", "pw"),
        ],
    );
    assert!(
        !out.status.success(),
        "creds and a user together are refused"
    );
}
