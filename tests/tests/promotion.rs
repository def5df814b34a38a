//! End-to-end tests of promotion: dev deploys by itself, acceptance after one
//! reviewer's approval, production after two; the author's, a repeated and an
//! expired approval do not count; the production agent refuses a command
//! without a reviewer quorum even when the controller's key signed it; the
//! security gate holds a release with critical vulnerabilities; a restarted
//! controller keeps its pending approvals and history.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use ferry_controller::config::{ReviewerSettings, StageSettings};
use ferry_e2e::*;
use ferry_protocol::approval::{Approval, ApprovalKind, SignedApproval};
use ferry_protocol::command::{Action, ActionKind, Command, ReleaseSpec};
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::{subject, EnvName, Envelope, RefusalReason, ServiceName, SigningKey, Version};
use futures::StreamExt;
use time::OffsetDateTime;

struct Reviewer {
    name: &'static str,
    key: SigningKey,
    file: PathBuf,
}

fn reviewer(system: &System, name: &'static str) -> Reviewer {
    let key = SigningKey::generate();
    let file = system.dir.path().join(format!("{name}.nk"));
    std::fs::write(&file, key.seed().unwrap()).unwrap();
    Reviewer { name, key, file }
}

fn stage(approvals: u32, soak: &str, reviewers: &[&Reviewer]) -> StageSettings {
    StageSettings {
        auto_deploy: Some(true),
        soak: Some(soak.into()),
        approvals_required: approvals,
        reviewers: reviewers
            .iter()
            .map(|r| ReviewerSettings {
                name: r.name.into(),
                key: r.key.public_key(),
            })
            .collect(),
        strategy: None,
        max_parallel_hosts: None,
    }
}

struct Pipeline {
    system: System,
    alice: Reviewer,
    bob: Reviewer,
    carol: Reviewer,
    ports: BTreeMap<&'static str, u16>,
}

/// dev (automatic), acceptance (1 approval, 1s soak), production (2
/// approvals); alice, bob and carol review; each environment has its agent,
/// the gated ones requiring the same quorum of the same reviewer keys.
async fn pipeline() -> Pipeline {
    pipeline_with(true).await
}

/// As [`pipeline`]; with `production_auto = false` production waits for
/// `ferry promote`.
async fn pipeline_with(production_auto: bool) -> Pipeline {
    let mut system = System::without_controller();
    let alice = reviewer(&system, "alice");
    let bob = reviewer(&system, "bob");
    let carol = reviewer(&system, "carol");
    let all = [&alice, &bob, &carol];
    let mut production = stage(2, "0s", &all);
    production.auto_deploy = Some(production_auto);
    system.controller_config.pipeline = BTreeMap::from([
        ("acceptance".to_owned(), stage(1, "1s", &all)),
        ("production".to_owned(), production),
    ]);
    system.start_controller().await;
    let mut ports = BTreeMap::new();
    for (env, required) in [("dev", 0), ("acceptance", 1), ("production", 2)] {
        let port = free_port();
        let mut config = system.agent_config(env, &[("web", port)]);
        config.approvals_required = required;
        if required > 0 {
            config.reviewer_keys = all.iter().map(|r| r.key.public_key()).collect();
        }
        system.start_agent_with(config).await;
        ports.insert(env, port);
    }
    Pipeline {
        system,
        alice,
        bob,
        carol,
        ports,
    }
}

async fn publish(system: &System, version: &str, author: &str, scan: Option<&str>) {
    let sample = bin("ferry-sample");
    let mut args = vec![
        "release",
        "publish",
        "--service",
        "web",
        "--version",
        version,
        "--artifact",
        sample.to_str().unwrap(),
        "--author",
        author,
    ];
    if let Some(scan) = scan {
        args.extend(["--scan", scan]);
    }
    assert_ok(&system.cli_async(&args).await, "ferry release publish");
}

async fn approve(
    system: &System,
    who: &Reviewer,
    env: &str,
    extra: &[&str],
) -> std::process::Output {
    let file = who.file.to_str().unwrap().to_owned();
    let mut args = vec![
        "approve", "web", "1.0.0", "-e", env, "--key", &file, "--name", who.name,
    ];
    args.extend_from_slice(extra);
    system.cli_async(&args).await
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `ferry approvals --all -o json` row of web 1.0.0 in `env`.
async fn promotion_row(system: &System, env: &str) -> Option<serde_json::Value> {
    let out = system
        .cli_async(&["approvals", "--all", "-e", env, "-o", "json"])
        .await;
    assert_ok(&out, "ferry approvals");
    json(&out)
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "web" && r["version"] == "1.0.0")
        .cloned()
}

async fn wait_promotion(
    system: &System,
    env: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let row = promotion_row(system, env).await;
        if let Some(row) = row.as_ref().filter(|r| pred(r)) {
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the promotion into {env} never showed {what}; last: {row:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn deploy_succeeded(e: &ServiceEvent, version: &str) -> bool {
    matches!(&e.body, EventBody::Succeeded { action: ActionKind::Deploy, version: Some(v), .. } if v.as_str() == version)
}

async fn audit(system: &System, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["audit", "--limit", "1000", "-o", "json"];
    all.extend_from_slice(args);
    let out = system.cli_async(&all).await;
    assert_ok(&out, "ferry audit");
    json(&out).as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_goes_to_dev_then_acceptance_after_one_approval_then_production_after_two() {
    let p = pipeline().await;
    let system = &p.system;
    let client = system.nats.client().await;
    let mut dev = EventWatch::new(&client, "dev", "web").await;
    let mut acceptance = EventWatch::new(&client, "acceptance", "web").await;
    let mut production = EventWatch::new(&client, "production", "web").await;

    // carol wrote it, so carol's approval must not count.
    publish(system, "1.0.0", "carol", Some("critical=0,high=1")).await;
    dev.wait_for(WAIT, "dev deploy of 1.0.0", |e| {
        deploy_succeeded(e, "1.0.0")
    })
    .await;
    wait_serving(p.ports["dev"], "1.0.0", WAIT).await;

    let row = wait_promotion(system, "acceptance", "waiting for approvals", |r| {
        r["state"] == "waiting" && r["detail"].as_str().unwrap().contains("approvals")
    })
    .await;
    assert_eq!(row["approvals_required"], 1);
    assert_eq!(row["approvals_valid"], 0);
    assert_eq!(
        row["waiting_for"],
        serde_json::json!(["alice", "bob"]),
        "the author is not asked"
    );
    assert!(row["eligible_at"].is_string(), "{row}");

    let out = approve(system, &p.carol, "acceptance", &[]).await;
    assert!(!out.status.success(), "the author's approval was accepted");
    assert!(stderr(&out).contains("author"), "{}", stderr(&out));
    let row = promotion_row(system, "acceptance").await.unwrap();
    assert_eq!(row["approvals_valid"], 0, "{row}");
    assert_eq!(row["state"], "waiting");

    let out = approve(system, &p.alice, "acceptance", &[]).await;
    assert_ok(&out, "alice approves acceptance");
    acceptance
        .wait_for(WAIT, "acceptance deploy of 1.0.0", |e| {
            deploy_succeeded(e, "1.0.0")
        })
        .await;
    wait_serving(p.ports["acceptance"], "1.0.0", WAIT).await;
    wait_promotion(system, "acceptance", "issued", |r| r["state"] == "issued").await;

    // Production: alice, then alice again (counts once), then bob.
    let row = wait_promotion(system, "production", "waiting for approvals", |r| {
        r["detail"].as_str().unwrap().contains("approvals")
    })
    .await;
    assert_eq!(row["approvals_required"], 2);
    assert_ok(
        &approve(system, &p.alice, "production", &[]).await,
        "alice approves production",
    );
    let again = approve(system, &p.alice, "production", &[]).await;
    assert!(!again.status.success(), "a repeated approval was accepted");
    assert!(stderr(&again).contains("counts once"), "{}", stderr(&again));
    let row = promotion_row(system, "production").await.unwrap();
    assert_eq!(row["approvals_valid"], 1, "{row}");
    assert_eq!(
        row["state"], "waiting",
        "one approval of two must not deploy: {row}"
    );
    assert_eq!(row["waiting_for"], serde_json::json!(["bob"]));

    assert_ok(
        &approve(system, &p.bob, "production", &[]).await,
        "bob approves production",
    );
    let done = production
        .wait_for(WAIT, "production deploy of 1.0.0", |e| {
            deploy_succeeded(e, "1.0.0")
        })
        .await;
    wait_serving(p.ports["production"], "1.0.0", WAIT).await;
    assert!(
        !production
            .seen
            .iter()
            .any(|e| matches!(e.body, EventBody::Refused { .. })),
        "the production agent refused the approved command: {:#?}",
        production.seen
    );
    let _ = done;

    // The audit trail has who approved, the refused attempts, and the deploys.
    let approvals = audit(system, &["--action", "approve"]).await;
    let said = |actor: &str, outcome: &str, env: &str| {
        approvals
            .iter()
            .any(|r| r["actor"] == actor && r["outcome"] == outcome && r["environment"] == env)
    };
    assert!(said("alice", "recorded", "acceptance"), "{approvals:#?}");
    assert!(said("alice", "recorded", "production"), "{approvals:#?}");
    assert!(said("bob", "recorded", "production"), "{approvals:#?}");
    assert!(said("carol", "refused", "acceptance"), "{approvals:#?}");
    assert!(said("alice", "refused", "production"), "{approvals:#?}");
    let bob_only = audit(system, &["--actor", "bob"]).await;
    assert!(!bob_only.is_empty());
    assert!(
        bob_only.iter().all(|r| r["actor"] == "bob"),
        "{bob_only:#?}"
    );
    let production_deploys = audit(system, &["-e", "production", "--action", "deploy"]).await;
    assert!(
        production_deploys
            .iter()
            .any(|r| r["outcome"] == "succeeded" && r["version"] == "1.0.0"),
        "{production_deploys:#?}"
    );
    let future = audit(system, &["--since", "2999-01-01T00:00:00Z"]).await;
    assert!(future.is_empty(), "{future:#?}");
    p.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_approval_does_not_count_and_a_restarted_controller_keeps_pending_approvals_and_history(
) {
    let mut p = pipeline().await;
    let client = p.system.nats.client().await;
    let mut production = EventWatch::new(&client, "production", "web").await;
    publish(&p.system, "1.0.0", "ci-bot", None).await;
    assert_ok(
        &approve(&p.system, &p.alice, "acceptance", &[]).await,
        "alice approves acceptance",
    );
    wait_promotion(&p.system, "production", "waiting for approvals", |r| {
        r["detail"].as_str().unwrap().contains("approvals")
    })
    .await;

    // alice's approval lasts 2 seconds; it has expired before bob's comes.
    assert_ok(
        &approve(&p.system, &p.alice, "production", &["--valid-for", "2s"]).await,
        "alice approves production briefly",
    );
    wait_promotion(&p.system, "production", "alice's approval expired", |r| {
        r["approvals"][0]["counts"] == false
    })
    .await;
    assert_ok(
        &approve(&p.system, &p.bob, "production", &[]).await,
        "bob approves production",
    );
    let row = promotion_row(&p.system, "production").await.unwrap();
    assert_eq!(
        row["approvals_valid"], 1,
        "the expired approval counted: {row}"
    );
    assert_eq!(row["state"], "waiting", "{row}");

    // The audit trail is append-only: JetStream refuses to purge it or to
    // delete a record from it.
    let js = jetstream::new(client.clone());
    let history = js.get_stream("FERRY_HISTORY").await.unwrap();
    assert!(history.purge().await.is_err(), "the audit trail was purged");
    assert!(
        history.delete_message(1).await.is_err(),
        "a record was deleted from the audit trail"
    );

    let history_before = audit(&p.system, &[]).await;
    p.system.stop_controller().await;
    p.system.start_controller().await;

    let row = promotion_row(&p.system, "production").await.unwrap();
    assert_eq!(row["state"], "waiting", "{row}");
    assert_eq!(row["approvals_valid"], 1, "{row}");
    let names: Vec<&str> = row["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["reviewer_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"], "{row}");
    let history_after = audit(&p.system, &[]).await;
    assert!(
        history_after.len() >= history_before.len()
            && history_after[..history_before.len()] == history_before[..],
        "history changed across the restart"
    );
    assert!(history_after
        .iter()
        .any(|r| r["action"] == "approve" && r["actor"] == "bob"));

    // alice approves again (her old approval expired, so this one counts).
    assert_ok(
        &approve(&p.system, &p.alice, "production", &[]).await,
        "alice approves production again",
    );
    production
        .wait_for(WAIT, "production deploy of 1.0.0", |e| {
            deploy_succeeded(e, "1.0.0")
        })
        .await;
    wait_serving(p.ports["production"], "1.0.0", WAIT).await;
    p.system.shutdown().await;
}

fn release_spec() -> ReleaseSpec {
    ReleaseSpec {
        version: Version::new("1.0.0").unwrap(),
        artifact: bin("ferry-sample").to_str().unwrap().to_owned(),
        digest: Some("sha256:0123".into()),
        env: BTreeMap::new(),
    }
}

/// A genuine production approval by `reviewer` of web `version` with `digest`.
fn approval_of(reviewer: &SigningKey, version: &str, digest: &str) -> SignedApproval {
    let now = OffsetDateTime::now_utc();
    Approval {
        service: ServiceName::new("web").unwrap(),
        version: Version::new(version).unwrap(),
        digest: digest.into(),
        environment: EnvName::new("production").unwrap(),
        reviewer: reviewer.public_key(),
        reviewer_name: "someone".into(),
        issued_at: now,
        expires_at: now + Duration::from_secs(3600),
        kind: ApprovalKind::Deploy,
    }
    .sign(reviewer)
    .unwrap()
}

fn signed_approval(signer: &SigningKey, named: &SigningKey, env: &str) -> SignedApproval {
    let now = OffsetDateTime::now_utc();
    let approval = Approval {
        service: ServiceName::new("web").unwrap(),
        version: Version::new("1.0.0").unwrap(),
        digest: "sha256:0123".into(),
        environment: EnvName::new(env).unwrap(),
        reviewer: named.public_key(),
        reviewer_name: "someone".into(),
        issued_at: now,
        expires_at: now + Duration::from_secs(3600),
        kind: ApprovalKind::Deploy,
    };
    if signer.public_key() == named.public_key() {
        approval.sign(signer).unwrap()
    } else {
        // A forgery: signed by `signer`, then made to name `named`.
        let mut forged = Approval {
            reviewer: signer.public_key(),
            ..approval
        }
        .sign(signer)
        .unwrap();
        forged.data.reviewer = named.public_key();
        forged.issuer = Some(named.public_key());
        forged
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_agent_refuses_a_controller_signed_deploy_without_a_reviewer_quorum() {
    // No controller at all: commands are published straight to JetStream,
    // signed with the controller's key, as a compromised controller would.
    let mut system = System::without_controller();
    let (alice, bob, mallory) = (
        SigningKey::generate(),
        SigningKey::generate(),
        SigningKey::generate(),
    );
    let port = free_port();
    let mut config = system.agent_config("production", &[("web", port)]);
    config.approvals_required = 2;
    config.reviewer_keys = vec![alice.public_key(), bob.public_key()];
    system.start_agent_with(config).await;
    let client = system.nats.client().await;
    let js = jetstream::new(client.clone());
    let mut watch = EventWatch::new(&client, "production", "web").await;

    let deploy = |approvals: Vec<SignedApproval>| Command {
        environment: EnvName::new("production").unwrap(),
        service: ServiceName::new("web").unwrap(),
        actor: Some("compromised-controller".into()),
        hosts: Vec::new(),
        action: Action::Deploy {
            release: release_spec(),
            replicas: Some(1),
            health: None,
            approvals,
            rollout: None,
            hotfix: false,
        },
    };
    let cases = [
        ("no approvals", vec![], RefusalReason::ApprovalsMissing),
        (
            "one approval of two",
            vec![signed_approval(&alice, &alice, "production")],
            RefusalReason::ApprovalsMissing,
        ),
        (
            "alice twice",
            vec![
                signed_approval(&alice, &alice, "production"),
                signed_approval(&alice, &alice, "production"),
            ],
            RefusalReason::ApprovalsMissing,
        ),
        (
            "bob's approval forged by mallory",
            vec![
                signed_approval(&alice, &alice, "production"),
                signed_approval(&mallory, &bob, "production"),
            ],
            RefusalReason::BadApproval,
        ),
        (
            "an untrusted reviewer",
            vec![
                signed_approval(&alice, &alice, "production"),
                signed_approval(&mallory, &mallory, "production"),
            ],
            RefusalReason::BadApproval,
        ),
        (
            "approvals of acceptance",
            vec![
                signed_approval(&alice, &alice, "acceptance"),
                signed_approval(&bob, &bob, "acceptance"),
            ],
            RefusalReason::BadApproval,
        ),
        (
            "both reviewers' genuine approvals of another version",
            vec![
                approval_of(&alice, "9.9.9", "sha256:0123"),
                approval_of(&bob, "9.9.9", "sha256:0123"),
            ],
            RefusalReason::BadApproval,
        ),
        (
            "both reviewers' genuine approvals of another digest",
            vec![
                approval_of(&alice, "1.0.0", "sha256:ffff"),
                approval_of(&bob, "1.0.0", "sha256:ffff"),
            ],
            RefusalReason::BadApproval,
        ),
    ];
    let subject = subject::command(
        &EnvName::new("production").unwrap(),
        &ServiceName::new("web").unwrap(),
    );
    for (what, approvals, reason) in cases {
        let envelope = Envelope::new("/ferry/controller", deploy(approvals))
            .expiring_in(Duration::from_secs(60))
            .sign(&system.controller_key)
            .unwrap();
        js.publish(subject.clone(), envelope.to_bytes().unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
        let outcome = watch.outcome(envelope.id, WAIT).await;
        match &outcome.body {
            EventBody::Refused { reason: r, detail } => {
                assert_eq!(*r, reason, "{what}: {detail}");
            }
            other => panic!("{what}: the agent did not refuse: {other:?}"),
        }
    }
    assert!(
        get(port, "/").await.is_none_or(|a| a.status != 200),
        "something was deployed"
    );

    // The same command with alice's and bob's own signatures runs.
    let envelope = Envelope::new(
        "/ferry/controller",
        deploy(vec![
            signed_approval(&alice, &alice, "production"),
            signed_approval(&bob, &bob, "production"),
        ]),
    )
    .expiring_in(Duration::from_secs(60))
    .sign(&system.controller_key)
    .unwrap();
    js.publish(subject.clone(), envelope.to_bytes().unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let outcome = watch.outcome(envelope.id, WAIT).await;
    assert!(deploy_succeeded(&outcome, "1.0.0"), "{outcome:?}");
    wait_serving(port, "1.0.0", WAIT).await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_with_critical_vulnerabilities_is_blocked_until_two_reviewers_override() {
    let p = pipeline().await;
    let system = &p.system;
    let client = system.nats.client().await;
    let mut dev = EventWatch::new(&client, "dev", "web").await;
    publish(system, "1.0.0", "ci-bot", Some("critical=2,high=3")).await;

    let row = wait_promotion(system, "dev", "blocked", |r| r["state"] == "blocked").await;
    let detail = row["detail"].as_str().unwrap();
    assert!(
        detail.contains("security gate") && detail.contains("2 critical"),
        "{detail}"
    );
    assert_eq!(row["overrides_required"], 2);
    let gate = audit(system, &["--action", "gate"]).await;
    assert!(
        gate.iter()
            .any(|r| r["outcome"] == "blocked" && r["environment"] == "dev"),
        "{gate:#?}"
    );
    // A deploy by hand is held at the gate too.
    let out = system
        .cli_async(&["deploy", "web", "1.0.0", "-e", "dev"])
        .await;
    assert!(
        !out.status.success(),
        "a blocked release was deployed by hand"
    );
    assert!(stderr(&out).contains("security gate"), "{}", stderr(&out));
    let status = system
        .cli_async(&["status", "-e", "dev", "-o", "json"])
        .await;
    assert!(
        json(&status)
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["version"].is_null()),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    // A deploy approval is not an override; two overrides are.
    assert_ok(
        &approve(system, &p.alice, "dev", &["--security-override"]).await,
        "alice overrides",
    );
    let row = promotion_row(system, "dev").await.unwrap();
    assert_eq!(
        row["state"], "blocked",
        "one override of two let it through"
    );
    assert_eq!(row["overrides_valid"], 1);
    assert_ok(
        &approve(system, &p.bob, "dev", &["--security-override"]).await,
        "bob overrides",
    );
    dev.wait_for(WAIT, "dev deploy of 1.0.0 after the override", |e| {
        deploy_succeeded(e, "1.0.0")
    })
    .await;
    wait_serving(p.ports["dev"], "1.0.0", WAIT).await;
    p.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_promote_opens_a_manual_promotion_and_ferry_reject_stops_one() {
    let p = pipeline_with(false).await;
    let system = &p.system;
    let client = system.nats.client().await;
    let mut acceptance = EventWatch::new(&client, "acceptance", "web").await;
    let mut production = EventWatch::new(&client, "production", "web").await;
    publish(system, "1.0.0", "ci-bot", None).await;
    assert_ok(
        &approve(system, &p.alice, "acceptance", &[]).await,
        "alice approves acceptance",
    );
    acceptance
        .wait_for(WAIT, "acceptance deploy of 1.0.0", |e| {
            deploy_succeeded(e, "1.0.0")
        })
        .await;
    // Production does not open by itself: approvals are recorded but wait.
    assert_ok(
        &approve(system, &p.alice, "production", &[]).await,
        "alice approves production",
    );
    assert_ok(
        &approve(system, &p.bob, "production", &[]).await,
        "bob approves production",
    );
    let row = promotion_row(system, "production").await.unwrap();
    assert_eq!(row["state"], "waiting", "{row}");
    assert_eq!(row["approvals_valid"], 2, "{row}");
    assert!(
        row["detail"].as_str().unwrap().contains("ferry promote"),
        "{row}"
    );

    let out = system
        .cli_async(&["promote", "web", "1.0.0", "-e", "production", "-o", "json"])
        .await;
    assert_ok(&out, "ferry promote");
    production
        .wait_for(WAIT, "production deploy of 1.0.0", |e| {
            deploy_succeeded(e, "1.0.0")
        })
        .await;
    let promoted = audit(system, &["--action", "promote", "-e", "production"]).await;
    assert!(
        promoted
            .iter()
            .any(|r| r["outcome"] == "requested" && r["actor"] == "e2e-test"),
        "{promoted:#?}"
    );

    // 2.0.0 is rejected for acceptance: approvals no longer move it.
    publish(system, "2.0.0", "ci-bot", None).await;
    let out = system
        .cli_async(&[
            "reject",
            "web",
            "2.0.0",
            "-e",
            "acceptance",
            "--reason",
            "breaks checkout",
        ])
        .await;
    assert_ok(&out, "ferry reject");
    let file = p.alice.file.to_str().unwrap().to_owned();
    let out = system
        .cli_async(&[
            "approve",
            "web",
            "2.0.0",
            "-e",
            "acceptance",
            "--key",
            &file,
            "--name",
            "alice",
        ])
        .await;
    assert!(
        !out.status.success(),
        "an approval of a rejected release was accepted"
    );
    assert!(stderr(&out).contains("rejected"), "{}", stderr(&out));
    let rejected = audit(system, &["--action", "reject"]).await;
    assert!(
        rejected.iter().any(|r| r["version"] == "2.0.0"
            && r["detail"].as_str().unwrap().contains("breaks checkout")),
        "{rejected:#?}"
    );
    let out = system
        .cli_async(&["approvals", "--all", "-e", "acceptance", "-o", "json"])
        .await;
    let rows = json(&out);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "2.0.0")
        .unwrap();
    assert_eq!(row["state"], "rejected", "{row}");
    p.system.shutdown().await;
}

/// How many commands the FERRY_COMMANDS stream holds for `env`'s web.
async fn stored_commands(client: &async_nats::Client, env: &str) -> u64 {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("FERRY_COMMANDS").await.unwrap();
    let subject = format!("ferry.v1.cmd.{env}.web");
    let mut subjects = stream.info_with_subjects(&subject).await.unwrap();
    let mut total = 0;
    while let Some(entry) = subjects.next().await {
        total += entry.unwrap().1;
    }
    total as u64
}

/// A second controller instance on the same NATS and key; cancel the token
/// and await the task to stop it.
fn second_controller(
    system: &System,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Result<(), ferry_controller::Error>>,
) {
    let mut second = system.controller_config.clone();
    second.nats_url = system.nats.url();
    second.signing_key_file = system.dir.path().join("controller.nk");
    let second = second.validate().unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(ferry_controller::run(second, token.clone()));
    (token, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_promote_a_release_once() {
    let p = pipeline().await;
    let system = &p.system;
    let (token, task) = second_controller(system);

    let client = system.nats.client().await;
    let mut production = EventWatch::new(&client, "production", "web").await;
    publish(system, "1.0.0", "ci-bot", None).await;
    assert_ok(
        &approve(system, &p.alice, "acceptance", &[]).await,
        "alice approves acceptance",
    );
    wait_promotion(system, "production", "waiting for approvals", |r| {
        r["detail"].as_str().unwrap().contains("approvals")
    })
    .await;
    assert_ok(
        &approve(system, &p.alice, "production", &[]).await,
        "alice approves production",
    );
    assert_ok(
        &approve(system, &p.bob, "production", &[]).await,
        "bob approves production",
    );
    production
        .wait_for(WAIT, "production deploy of 1.0.0", |e| {
            deploy_succeeded(e, "1.0.0")
        })
        .await;
    for env in ["dev", "acceptance", "production"] {
        assert_eq!(stored_commands(&client, env).await, 1, "commands to {env}");
    }
    let starts: Vec<serde_json::Value> = audit(system, &["--action", "deploy", "-e", "production"])
        .await
        .into_iter()
        .filter(|r| r["outcome"] == "issued")
        .collect();
    assert_eq!(starts.len(), 1, "{starts:#?}");
    token.cancel();
    task.await.unwrap().unwrap();
    p.system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_release_supersedes_a_pending_promotion_which_hides_unless_all() {
    let p = pipeline().await;
    let system = &p.system;
    // A second controller instance: supersession is recorded once.
    let (token, task) = second_controller(system);

    publish(system, "1.0.0", "ci-bot", None).await;
    wait_promotion(system, "acceptance", "waiting for approvals", |r| {
        r["state"] == "waiting" && r["detail"].as_str().unwrap().contains("approvals")
    })
    .await;
    // 1.1.0 replaces 1.0.0 in dev before anyone approved 1.0.0 for acceptance.
    publish(system, "1.1.0", "ci-bot", None).await;
    let row = wait_promotion(system, "acceptance", "superseded", |r| {
        r["state"] == "superseded"
    })
    .await;
    assert_eq!(row["superseded_by"], "1.1.0", "{row:#}");
    assert!(row["detail"].as_str().unwrap().contains("1.1.0"), "{row:#}");

    // Hidden by default; 1.1.0's own promotion is what is listed.
    let out = system
        .cli_async(&["approvals", "-e", "acceptance", "-o", "json"])
        .await;
    assert_ok(&out, "ferry approvals");
    let versions: Vec<String> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(versions, ["1.1.0"], "ferry approvals -e acceptance");
    let table = system.cli_async(&["approvals"]).await;
    assert_ok(&table, "ferry approvals");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(!text.contains("1.0.0"), "{text}");

    // It goes no further: an approval now is refused and deploys nothing.
    let late = approve(system, &p.alice, "acceptance", &[]).await;
    assert!(!late.status.success());
    assert!(stderr(&late).contains("superseded"), "{}", stderr(&late));

    // Audited once, with the superseding version, however many controllers.
    let superseded: Vec<serde_json::Value> = audit(system, &["-e", "acceptance"])
        .await
        .into_iter()
        .filter(|r| r["outcome"] == "superseded")
        .collect();
    assert_eq!(superseded.len(), 1, "{superseded:#?}");
    assert_eq!(superseded[0]["version"], "1.0.0");
    assert!(superseded[0]["detail"].as_str().unwrap().contains("1.1.0"));
    let client = system.nats.client().await;
    assert_eq!(stored_commands(&client, "acceptance").await, 0);
    token.cancel();
    task.await.unwrap().unwrap();
    p.system.shutdown().await;
}

/// Every command the FERRY_COMMANDS stream holds.
async fn all_stored_commands(client: &async_nats::Client) -> u64 {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream("FERRY_COMMANDS").await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_dry_run_shows_strategy_approvals_and_the_gate_and_issues_nothing() {
    let p = pipeline().await;
    let system = &p.system;
    let client = system.nats.client().await;
    let mut dev = EventWatch::new(&client, "dev", "web").await;
    publish(system, "1.0.0", "ci-bot", None).await;
    dev.wait_for(WAIT, "dev deploy of 1.0.0", |e| {
        deploy_succeeded(e, "1.0.0")
    })
    .await;
    publish(system, "2.0.0", "ci-bot", Some("critical=1")).await;
    wait_promotion(system, "dev", "1.0.0 issued", |r| r["state"] == "issued").await;
    let commands = all_stored_commands(&client).await;

    // Production, gated on two approvals; one recorded.
    assert_ok(
        &approve(system, &p.alice, "production", &[]).await,
        "alice approves production",
    );
    let out = system
        .cli_async(&[
            "deploy",
            "web",
            "1.0.0",
            "-e",
            "production",
            "--dry-run",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs 2 approvals"),
        "{}",
        stderr(&out)
    );
    let plan = json(&out);
    assert_eq!(plan["would_issue"], false, "{plan:#}");
    assert_eq!(plan["approvals"]["required"], 2, "{plan:#}");
    assert_eq!(plan["approvals"]["present"], serde_json::json!(["alice"]));
    assert_eq!(plan["approvals"]["missing"], 1, "{plan:#}");
    let may: Vec<&str> = plan["approvals"]["may_approve"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(may, ["bob", "carol"], "{plan:#}");
    assert_eq!(plan["gate"]["passes"], true, "{plan:#}");
    // The agent's configured strategy, as its heartbeat reports it.
    assert_eq!(plan["strategy"]["type"], "recreate", "{plan:#}");
    assert!(
        plan["strategy_from"]
            .as_str()
            .unwrap()
            .contains("production's configuration of web"),
        "{plan:#}"
    );
    assert!(!plan["steps"].as_array().unwrap().is_empty(), "{plan:#}");

    // dev, ungated, with a canary override: it would be issued.
    let out = system
        .cli_async(&[
            "deploy",
            "web",
            "1.0.0",
            "-e",
            "dev",
            "--replicas",
            "3",
            "--strategy",
            "canary",
            "--steps",
            "20,100",
            "--dry-run",
        ])
        .await;
    assert_ok(&out, "ferry deploy --dry-run to dev");
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "would be issued",
        "dev runs 1.0.0 now",
        "canary (20 %, 100 %, 30 s each) — from this deploy's --strategy",
        "replicas:  3",
        "send 20 % of requests to 1.0.0 for 30 s",
        "approvals: none needed in dev",
        "gate:      passes",
    ] {
        assert!(text.contains(expected), "{expected:?} not in\n{text}");
    }

    // A release with a critical finding: the gate's verdict.
    let out = system
        .cli_async(&["deploy", "web", "2.0.0", "-e", "dev", "--dry-run"])
        .await;
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("would be refused"), "{text}");
    assert!(
        text.contains("gate:      blocks: 1 critical vulnerabilities, 0 of 2"),
        "{text}"
    );
    assert!(stderr(&out).contains("security gate"), "{}", stderr(&out));

    // Nothing was issued by any of it.
    assert_eq!(all_stored_commands(&client).await, commands);
    let issued = audit(system, &["--action", "deploy"])
        .await
        .into_iter()
        .filter(|r| r["outcome"] == "issued")
        .count();
    assert_eq!(issued, 1, "only dev's deploy of 1.0.0 was issued");
    p.system.shutdown().await;
}
