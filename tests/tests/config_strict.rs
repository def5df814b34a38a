//! Strict configuration, through the real binaries: every configuration
//! file ferry ships (deploy/, the Kubernetes ConfigMap, the files
//! scripts/demo writes) passes `check-config`, and a key that matches no
//! setting, at every level of the agent's and the controller's
//! configuration or as a `FERRY_*` variable, is refused with exit 64 naming
//! it. `check-config` connects nowhere: no NATS server runs here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_e2e::bin;
use ferry_protocol::SigningKey;

/// Exit code of a bad configuration.
const EXIT_BAD_CONFIG: i32 = 64;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What `check-config` answered.
struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `daemon check-config file` with only `vars` of the `FERRY_*` variables.
fn check_config(daemon: &str, file: &Path, vars: &[(&str, &str)]) -> Checked {
    let mut command = Command::new(bin(daemon));
    command.arg("check-config").arg(file);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FERRY_") {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().copied());
    let output = command.output().unwrap();
    Checked {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn assert_valid(daemon: &str, file: &Path, vars: &[(&str, &str)]) -> Checked {
    let checked = check_config(daemon, file, vars);
    assert_eq!(
        checked.code,
        Some(0),
        "{daemon} check-config {}: {}",
        file.display(),
        checked.stderr
    );
    assert!(checked.stdout.contains("valid"), "{}", checked.stdout);
    checked
}

/// Refused with exit 64, the problem listed as `expected`.
fn assert_refused(daemon: &str, file: &Path, vars: &[(&str, &str)], expected: &str) {
    let checked = check_config(daemon, file, vars);
    assert_eq!(
        checked.code,
        Some(EXIT_BAD_CONFIG),
        "{daemon} check-config {} accepted it: {}",
        file.display(),
        checked.stdout
    );
    assert!(
        checked.stderr.contains(expected),
        "{expected:?} not in:\n{}",
        checked.stderr
    );
}

/// A controller signing key in `dir`, its path.
fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("controller.nk");
    std::fs::write(&path, SigningKey::generate().seed().unwrap()).unwrap();
    path
}

/// A shipped agent configuration with one line replaced, written to `dir`.
fn agent_production_with(dir: &Path, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(repository().join("deploy/agent-production.toml")).unwrap();
    assert!(
        text.contains(from),
        "deploy/agent-production.toml has no {from:?}"
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

#[test]
fn every_agent_configuration_in_deploy_passes_check_config() {
    let deploy = repository().join("deploy");
    for file in [
        "agent-dev.toml",
        "agent-dev-docker.toml",
        "agent-acceptance.toml",
        "agent-production.toml",
        "agent-production-leaf.toml",
        "compose/agent-dev.toml",
        "compose/agent-acceptance.toml",
        "compose/agent-production.toml",
    ] {
        assert_valid("ferry-agent", &deploy.join(file), &[]);
    }
}

#[test]
fn every_controller_configuration_in_deploy_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let key = key.to_str().unwrap();
    let deploy = repository().join("deploy");
    // The files name the key where an installation keeps it; here it is a
    // fresh one, given the way an operator overrides a setting.
    for file in ["controller.toml", "compose/controller.toml"] {
        assert_valid(
            "ferry-controller",
            &deploy.join(file),
            &[("FERRY_SIGNING_KEY_FILE", key)],
        );
    }
}

#[test]
fn the_kubernetes_config_map_s_agent_configuration_passes_check_config() {
    let manifest =
        std::fs::read_to_string(repository().join("deploy/kubernetes/agent.yaml")).unwrap();
    let embedded: String = manifest
        .lines()
        .skip_while(|line| line.trim() != "agent.toml: |")
        .skip(1)
        .take_while(|line| line.starts_with("    ") || line.is_empty())
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect();
    assert!(embedded.contains("environment = \"dev\""), "{embedded}");
    // The placeholder an installation replaces with its controller's key.
    let embedded = embedded.replace(
        "REPLACE_WITH_THE_CONTROLLER_PUBLIC_KEY",
        &SigningKey::generate().public_key(),
    );
    assert!(
        embedded.contains("nats_password_file = \"/etc/ferry-nats/password\""),
        "the password comes from the Secret mounted at /etc/ferry-nats: {embedded}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, embedded).unwrap();
    // The Secret's file, where this machine has it, given the way an
    // operator overrides a setting.
    let password = dir.path().join("password");
    std::fs::write(&password, "a password\n").unwrap();
    assert_valid(
        "ferry-agent",
        &file,
        &[("FERRY_NATS_PASSWORD_FILE", password.to_str().unwrap())],
    );
}

/// The configuration files scripts/demo writes (its `cat >FILE <<TOML`
/// blocks), with its shell variables filled in as the script would.
fn demo_configurations(dir: &Path) -> Vec<(String, PathBuf)> {
    let script = std::fs::read_to_string(repository().join("scripts/demo")).unwrap();
    let controller_key = key_file(dir);
    let alice = SigningKey::generate().public_key();
    let bob = SigningKey::generate().public_key();
    let controller_public = std::fs::read_to_string(&controller_key).unwrap();
    let controller_public = SigningKey::from_seed(&controller_public)
        .unwrap()
        .public_key();
    let values = [
        ("$FERRY_NATS_URL", "nats://127.0.0.1:4222".to_owned()),
        ("$DEMO", dir.to_str().unwrap().to_owned()),
        ("$DASHBOARD_PORT", "9080".to_owned()),
        ("$OPERATOR_TOKEN_SHA256", "ab".repeat(32)),
        ("$ALICE_KEY", alice),
        ("$BOB_KEY", bob),
        ("$CONTROLLER_KEY", controller_public),
        ("$1", "production".to_owned()),
        ("$2", "18082".to_owned()),
        ("$3", "2".to_owned()),
        ("$4", "2".to_owned()),
    ];
    let mut found = Vec::new();
    let mut lines = script.lines();
    while let Some(line) = lines.next() {
        let Some(start) = line.find("cat >\"$DEMO/") else {
            continue;
        };
        if !line.ends_with("<<TOML") {
            continue;
        }
        let name = line[start + "cat >\"$DEMO/".len()..]
            .split('"')
            .next()
            .unwrap()
            .replace("$1", "production");
        let mut text: String = lines
            .by_ref()
            .take_while(|l| *l != "TOML")
            .map(|l| format!("{l}\n"))
            .collect();
        for (variable, value) in &values {
            text = text.replace(variable, value);
        }
        assert!(!text.contains('$'), "{name}: a variable left:\n{text}");
        let path = dir.join(format!("{}-{name}", found.len()));
        std::fs::write(&path, text).unwrap();
        found.push((name, path));
    }
    found
}

#[test]
fn every_configuration_the_demo_writes_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let files = demo_configurations(dir.path());
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "controller.toml",
            "agent-production.toml",
            "agent-production.toml"
        ],
        "the demo's configurations (the controller's, the docker and process agents')"
    );
    for (name, path) in &files {
        let daemon = if name.starts_with("controller") {
            "ferry-controller"
        } else {
            "ferry-agent"
        };
        assert_valid(daemon, path, &[]);
    }
}

#[test]
fn check_config_prints_the_resolved_configuration_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let seed = std::fs::read_to_string(&key).unwrap();
    let password = dir.path().join("controller.password");
    std::fs::write(&password, "hunter2-not-printed").unwrap();
    let checked = assert_valid(
        "ferry-controller",
        &repository().join("deploy/controller.toml"),
        &[
            ("FERRY_SIGNING_KEY_FILE", key.to_str().unwrap()),
            ("FERRY_NATS_USER", "ferry-controller"),
            ("FERRY_NATS_PASSWORD_FILE", password.to_str().unwrap()),
        ],
    );
    let public = SigningKey::from_seed(&seed).unwrap().public_key();
    assert!(checked.stdout.contains(&public), "{}", checked.stdout);
    assert!(checked.stdout.contains(password.to_str().unwrap()));
    assert!(
        !checked.stdout.contains(seed.trim()),
        "the seed was printed"
    );
    assert!(
        !checked.stdout.contains("hunter2"),
        "the password was printed"
    );
}

#[test]
fn a_misspelled_top_level_key_of_the_agent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = agent_production_with(
        dir.path(),
        "approvals_required = 2",
        "approvals_requird = 2",
    );
    assert_refused(
        "ferry-agent",
        &file,
        &[],
        "approvals_requird: unknown setting; did you mean `approvals_required`?",
    );
}

#[test]
fn a_misspelled_key_of_a_service_table_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = agent_production_with(dir.path(), "replicas = 3", "replica = 3");
    assert_refused(
        "ferry-agent",
        &file,
        &[],
        "services.web.replica: unknown setting; did you mean `services.web.replicas`?",
    );
}

#[test]
fn misspelled_keys_of_nested_tables_are_refused_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = agent_production_with(dir.path(), "path = \"/health\"", "pth = \"/health\"");
    let text = std::fs::read_to_string(&file).unwrap().replacen(
        "min_requests = 20",
        "min_request = 20",
        1,
    );
    std::fs::write(&file, text).unwrap();
    for expected in [
        "services.web.health.pth: unknown setting; did you mean `services.web.health.path`?",
        "services.web.analysis.min_request: unknown setting; did you mean `services.web.analysis.min_requests`?",
    ] {
        assert_refused("ferry-agent", &file, &[], expected);
    }
}

#[test]
fn a_misspelled_table_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = agent_production_with(dir.path(), "[services.web.health]", "[services.web.heath]");
    assert_refused(
        "ferry-agent",
        &file,
        &[],
        "services.web.heath: unknown setting; did you mean `services.web.health`?",
    );
}

#[test]
fn an_unknown_ferry_variable_is_refused_by_both_daemons() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    assert_refused(
        "ferry-agent",
        &repository().join("deploy/agent-production.toml"),
        &[("FERRY_SERVICES__WEB__HEALTH__PTH", "/ready")],
        "FERRY_SERVICES__WEB__HEALTH__PTH: matches no setting (it would set `services.web.health.pth`); did you mean `FERRY_SERVICES__WEB__HEALTH__PATH`?",
    );
    assert_refused(
        "ferry-controller",
        &repository().join("deploy/controller.toml"),
        &[
            ("FERRY_SIGNING_KEY_FILE", key.to_str().unwrap()),
            ("FERRY_NATS_ULR", "nats://127.0.0.1:4222"),
        ],
        "FERRY_NATS_ULR: matches no setting (it would set `nats_ulr`); did you mean `FERRY_NATS_URL`?",
    );
}

/// `deploy/controller.toml` with one line replaced, written to `dir`, with
/// the variables that give it a signing key.
fn controller_with(dir: &Path, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(repository().join("deploy/controller.toml")).unwrap();
    assert!(
        text.contains(from),
        "deploy/controller.toml has no {from:?}"
    );
    let path = dir.join("controller.toml");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

#[test]
fn a_misspelled_top_level_key_of_the_controller_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let file = controller_with(dir.path(), "environments =", "enviroments =");
    assert_refused(
        "ferry-controller",
        &file,
        &[("FERRY_SIGNING_KEY_FILE", key.to_str().unwrap())],
        "enviroments: unknown setting; did you mean `environments`?",
    );
}

#[test]
fn misspelled_keys_of_the_controller_s_pipeline_and_notify_tables_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let file = controller_with(dir.path(), "soak = ", "soka = ");
    let text = std::fs::read_to_string(&file).unwrap()
        + "\n[notify.webhook]\nurll = \"https://example.com/hook\"\n";
    std::fs::write(&file, text).unwrap();
    for expected in [
        "pipeline.acceptance.soka: unknown setting; did you mean `pipeline.acceptance.soak`?",
        "notify.webhook.urll: unknown setting; did you mean `notify.webhook.url`?",
    ] {
        assert_refused(
            "ferry-controller",
            &file,
            &[("FERRY_SIGNING_KEY_FILE", key.to_str().unwrap())],
            expected,
        );
    }
}
