//! `ferry doctor` against a healthy system and against systems broken on
//! purpose, and `ferry drill rollback` on dev: real nats-server, controller,
//! agents and `ferry-sample` replicas, the real `ferry` CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use async_nats::jetstream;
use ferry_controller::config::{ReviewerSettings, StageSettings};
use ferry_e2e::*;
use ferry_protocol::streams;
use ferry_protocol::SigningKey;

/// `ferry doctor --output json`: its exit status and its checks by name.
fn doctor(system: &System) -> (bool, BTreeMap<String, serde_json::Value>) {
    let out = system.cli(&["doctor", "--output", "json"]);
    let report = json(&out);
    assert_eq!(
        report["ok"].as_bool(),
        Some(out.status.success()),
        "doctor's exit status and report disagree: {report}"
    );
    let checks = report["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("no checks in {report}"))
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c.clone()))
        .collect();
    (out.status.success(), checks)
}

/// A system whose controller knows only dev, with dev's agent serving
/// `web` 1.1.0 on `port` after 1.0.0, so it has a version to roll back to.
async fn dev_with_two_versions() -> (System, u16) {
    let mut system = System::without_controller();
    system.controller_config.environments = vec!["dev".into()];
    system.start_controller().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    for version in ["1.0.0", "1.1.0"] {
        system.publish_release("web", version, &[]).await;
        wait_serving(port, version, WAIT).await;
    }
    (system, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_every_check_of_a_healthy_system() {
    let (system, _port) = dev_with_two_versions().await;
    // The heartbeat naming 1.0.0 as the previous version follows the deploy.
    let checks = until("doctor passing every check", || {
        let (ok, checks) = doctor(&system);
        ok.then_some(checks)
    })
    .await;
    for name in [
        "server",
        "enabled",
        "stream FERRY_COMMANDS",
        "stream FERRY_EVENTS",
        "stream FERRY_RELEASES",
        "stream FERRY_HISTORY",
        "bucket ferry_releases",
        "bucket ferry_deployments",
        "bucket ferry_agents",
        "bucket ferry_promotions",
        "permissions",
        "api",
        "agent dev",
        "trust dev",
        "clock dev",
        "rollback dev/web",
    ] {
        let check = checks
            .get(name)
            .unwrap_or_else(|| panic!("no check {name} in {checks:?}"));
        assert_eq!(check["ok"], true, "{check}");
    }
    assert!(
        checks["stream FERRY_HISTORY"]["detail"]
            .as_str()
            .unwrap()
            .contains("append-only"),
        "{checks:?}"
    );
    assert!(
        checks["rollback dev/web"]["detail"]
            .as_str()
            .unwrap()
            .contains("1.1.0 can roll back to 1.0.0"),
        "{checks:?}"
    );
    let table = system.cli(&["doctor"]);
    assert_ok(&table, "ferry doctor");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(!text.contains("PROBLEM"), "{text}");
    assert!(text.contains("checks passed"), "{text}");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_each_problem_of_a_broken_system_and_fails() {
    let mut system = System::without_controller();
    let alice = SigningKey::generate();
    let bob = SigningKey::generate();
    system.controller_config.pipeline = BTreeMap::from([(
        "production".to_owned(),
        StageSettings {
            auto_deploy: Some(true),
            soak: Some("0s".into()),
            approvals_required: 1,
            reviewers: vec![ReviewerSettings {
                name: "alice".into(),
                key: alice.public_key(),
            }],
            strategy: None,
            max_parallel_hosts: None,
        },
    )]);
    system.start_controller().await;

    // dev trusts some other key than the controller's.
    let mut dev = system.agent_config("dev", &[("web", free_port())]);
    dev.trusted_keys = vec![SigningKey::generate().public_key()];
    system.start_agent_with(dev).await;
    // acceptance has no agent at all.
    // production trusts bob's approvals where the pipeline lists alice's,
    // and its clock runs ten minutes ahead.
    let mut production = system.agent_config("production", &[("web", free_port())]);
    production.approvals_required = 1;
    production.reviewer_keys = vec![bob.public_key()];
    production.clock_offset_secs = 600;
    system.start_agent_with(production).await;
    // A bucket went missing.
    let js = jetstream::new(system.nats.client().await);
    js.delete_key_value(streams::RELEASES_BUCKET).await.unwrap();

    let problems = [
        ("trust dev", "does not trust the controller's key"),
        ("agent acceptance", "no heartbeat"),
        ("reviewers production", &alice.public_key()),
        ("clock production", "off the NATS server's"),
        ("bucket ferry_releases", "missing"),
    ];
    let checks = until("doctor naming every problem", || {
        let (ok, checks) = doctor(&system);
        let all_named = problems
            .iter()
            .all(|(name, _)| checks.get(*name).is_some_and(|c| c["ok"] == false));
        (!ok && all_named).then_some(checks)
    })
    .await;
    for (name, says) in problems {
        let check = &checks[name];
        assert!(
            check["detail"].as_str().unwrap().contains(says),
            "{name} should say {says:?}: {check}"
        );
        assert!(
            !check["fix"].as_str().unwrap_or("").is_empty(),
            "{name} has no fix: {check}"
        );
    }
    for healthy in [
        "agent dev",
        "agent production",
        "trust production",
        "clock dev",
        "stream FERRY_HISTORY",
        "api",
    ] {
        assert_eq!(checks[healthy]["ok"], true, "{}", checks[healthy]);
    }
    assert!(checks["trust dev"]["fix"]
        .as_str()
        .unwrap()
        .contains(&system.controller_key.public_key()));

    let table = system.cli(&["doctor"]);
    assert_eq!(table.status.code(), Some(1), "{table:?}");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("PROBLEM  keys       trust dev"), "{text}");
    assert!(text.contains("fix: add \""), "{text}");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_on_dev_rolls_back_and_forward_without_failed_requests_and_is_audited() {
    let (system, port) = dev_with_two_versions().await;
    until("the agent reporting 1.0.0 as the previous version", || {
        let (_, checks) = doctor(&system);
        checks
            .get("rollback dev/web")
            .filter(|c| c["ok"] == true && c["detail"] != "not deployed yet")
            .cloned()
    })
    .await;

    let plan = system
        .cli_async(&["drill", "rollback", "web", "-e", "dev", "--dry-run"])
        .await;
    assert_ok(&plan, "ferry drill rollback --dry-run");
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains("roll back 1.1.0 -> 1.0.0"), "{text}");
    assert!(text.contains("roll forward 1.0.0 -> 1.1.0"), "{text}");
    let audit = system
        .cli_async(&["audit", "--action", "drill", "--output", "json"])
        .await;
    assert_eq!(
        json(&audit).as_array().unwrap().len(),
        0,
        "a dry run records nothing"
    );

    let drill = system
        .cli_async(&[
            "drill",
            "rollback",
            "web",
            "-e",
            "dev",
            "--load-interval",
            "5ms",
            "--output",
            "json",
        ])
        .await;
    assert_ok(&drill, "ferry drill rollback");
    let stdout = String::from_utf8_lossy(&drill.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["succeeded"], true, "{report}");
    assert_eq!(report["failed_requests"], 0, "{report}");
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    let back_ms = report["back_ms"].as_u64().expect("back timed");
    let forward_ms = report["forward_ms"].as_u64().expect("forward timed");
    eprintln!(
        "drill: back {back_ms} ms, forward {forward_ms} ms, {} requests",
        report["requests"]
    );
    wait_serving(port, "1.1.0", WAIT).await;

    let audit = system
        .cli_async(&["audit", "--action", "drill", "--output", "json"])
        .await;
    assert_ok(&audit, "ferry audit --action drill");
    let records = json(&audit);
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record["outcome"], "succeeded", "{record}");
    assert_eq!(record["environment"], "dev", "{record}");
    assert_eq!(record["actor"], "e2e-test", "{record}");
    let detail = record["detail"].as_str().unwrap();
    for timing in [back_ms, forward_ms] {
        let seconds = format!("{:.1} s", timing as f64 / 1000.0);
        assert!(detail.contains(&seconds), "{detail} lacks {seconds}");
    }
    assert!(detail.contains("0 of"), "{detail}");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_in_a_gated_environment_is_refused_once_the_serving_versions_approvals_expired() {
    let mut system = System::without_controller();
    let alice = SigningKey::generate();
    let alice_file = system.dir.path().join("alice.nk");
    std::fs::write(&alice_file, alice.seed().unwrap()).unwrap();
    system.controller_config.environments = vec!["dev".into(), "production".into()];
    system.controller_config.pipeline = BTreeMap::from([(
        "production".to_owned(),
        StageSettings {
            auto_deploy: Some(true),
            soak: Some("0s".into()),
            approvals_required: 1,
            reviewers: vec![ReviewerSettings {
                name: "alice".into(),
                key: alice.public_key(),
            }],
            strategy: None,
            max_parallel_hosts: None,
        },
    )]);
    system.start_controller().await;
    system.start_agent("dev", free_port()).await;
    let port = free_port();
    let mut production = system.agent_config("production", &[("web", port)]);
    production.approvals_required = 1;
    production.reviewer_keys = vec![alice.public_key()];
    system.start_agent_with(production).await;

    system.publish_release("web", "1.0.0", &[]).await;
    // alice's approval lasts long enough for the deploy, then expires.
    let approve = system
        .cli_async(&[
            "approve",
            "web",
            "1.0.0",
            "-e",
            "production",
            "--key",
            alice_file.to_str().unwrap(),
            "--valid-for",
            "3s",
        ])
        .await;
    assert_ok(&approve, "alice approves production");
    wait_serving(port, "1.0.0", WAIT).await;

    let refusal = until("the drill refused for want of valid approvals", || {
        let out = system.cli(&["drill", "rollback", "web", "-e", "production", "--dry-run"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code() == Some(1) && stderr.contains("approval-gated")).then_some(stderr)
    })
    .await;
    assert!(
        refusal.contains("0 valid recorded approvals of the 1 needed"),
        "{refusal}"
    );
    let audit = system
        .cli_async(&["audit", "--action", "drill", "--output", "json"])
        .await;
    assert_eq!(
        json(&audit).as_array().unwrap().len(),
        0,
        "a refused drill ran"
    );
    wait_serving(port, "1.0.0", WAIT).await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_missing_nats_permissions_with_their_fix() {
    let system = System::start_with_permissions().await;
    // CI's user may publish releases only: no API, no events.
    let out = system
        .cli_async_as(
            "ferry-ci",
            &["doctor", "--timeout", "2s", "--output", "json"],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = json(&out);
    let checks = report["checks"].as_array().unwrap();
    let permissions = checks
        .iter()
        .find(|c| c["name"] == "permissions")
        .unwrap_or_else(|| panic!("no permissions check in {report}"));
    assert_eq!(permissions["ok"], false, "{permissions}");
    assert!(
        permissions["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("permissions violation"),
        "{permissions}"
    );
    assert!(
        permissions["fix"]
            .as_str()
            .unwrap()
            .contains("ferry.v1.api.>"),
        "{permissions}"
    );
    system.shutdown().await;
}
