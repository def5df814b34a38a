//! End-to-end tests of the Kubernetes runtime: the real `ferry-agent` binary
//! with `runtime = "kubernetes"`, commands through a real nats-server, and the
//! cluster played by the in-process fake API server
//! (`ferry_e2e::fake_apiserver`); each test names it. One test points
//! Debian's real `kubectl` at the fake to keep it honest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use ferry_e2e::fake_apiserver::FakeApiServer;
use ferry_e2e::prometheus::{scrape, Discovery, Prometheus, Sample};
use ferry_e2e::rollout::{
    aborted, assert_error_rate_rollback_at_step_1, failed_reason, rollout_phase,
};
use ferry_e2e::*;
use ferry_protocol::command::{Action, ReleaseSpec, RollbackTarget};
use ferry_protocol::event::EventBody;
use ferry_protocol::rollout::{RolloutPhase, RolloutStatus};
use ferry_protocol::Version;
use serde_json::{json, Value};

const NS: &str = "ferry-dev";

fn release(version: &str, image: &str) -> ReleaseSpec {
    ReleaseSpec {
        version: Version::new(version).unwrap(),
        artifact: image.to_owned(),
        digest: None,
        env: Default::default(),
    }
}

fn deploy(version: &str, image: &str, replicas: u32) -> Action {
    Action::Deploy {
        release: release(version, image),
        replicas: Some(replicas),
        health: None,
        approvals: Vec::new(),
        rollout: None,
        hotfix: false,
    }
}

/// The fake, and an agent whose service `web` runs on it.
async fn start(system: &System) -> (FakeApiServer, AgentProcess) {
    start_with(system, "").await
}

/// [`start`] with more of `web`'s configuration (TOML tables after its own).
async fn start_with(system: &System, more: &str) -> (FakeApiServer, AgentProcess) {
    let fake = FakeApiServer::start(Duration::from_millis(200)).await;
    let kubeconfig = fake.kubeconfig(system.dir.path(), NS);
    let agent = AgentProcess::start(
        system,
        &format!(
            "metrics_interval = \"1s\"\n\n[services.web]\nruntime = \"kubernetes\"\ncontainer_port = 8080\nreplicas = 1\nlabels = {{ team = \"payments\" }}\n\n[services.web.health]\nstart_timeout = \"20s\"\n\n[services.web.kubernetes]\nnamespace = \"{NS}\"\nkubeconfig = \"{}\"\ncontext = \"fake\"\nservice_port = 80\nrequests = {{ cpu = \"100m\", memory = \"64Mi\" }}\n{more}",
            kubeconfig.display()
        ),
    )
    .await;
    (fake, agent)
}

/// Sends `action` to `web` and returns its outcome.
async fn command(system: &System, watch: &mut EventWatch, action: Action) -> EventBody {
    let client = system.nats.client().await;
    let id = send_command(&client, &system.controller_key, "dev", "web", action).await;
    watch.outcome(id, WAIT).await.body
}

fn back_to_previous() -> Action {
    Action::Rollback {
        to: RollbackTarget::Previous,
        force: false,
        dry_run: false,
    }
}

fn succeeded(body: &EventBody) -> bool {
    matches!(body, EventBody::Succeeded { .. })
}

/// The Deployment (the set) whose pods the Service selects; `None` when
/// it selects every set of the service (a canary running) or is absent.
fn selected_set(fake: &FakeApiServer) -> Option<String> {
    fake.object("services", NS, "web")?["spec"]["selector"]["ferry.io/set"]
        .as_str()
        .map(str::to_owned)
}

fn deployment_names(fake: &FakeApiServer) -> Vec<String> {
    let mut names: Vec<String> = fake
        .objects("deployments", NS)
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn pod_names(fake: &FakeApiServer) -> Vec<String> {
    let mut names: Vec<String> = fake
        .objects("pods", NS)
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_deploys_rolls_forward_fails_an_unpullable_image_fast_rolls_back_and_scales()
{
    let system = System::without_controller();
    let (fake, _agent) = start(&system).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;

    let v1 = command(
        &system,
        &mut watch,
        deploy("1.0.0", "registry.example/web:1", 3),
    )
    .await;
    assert!(succeeded(&v1), "{v1:?}");
    let d1 = fake
        .object("deployments", NS, "web-1-0-0")
        .expect("web-1-0-0");
    assert_eq!(d1["spec"]["replicas"], 3);
    assert_eq!(
        d1["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "ferry"
    );
    assert_eq!(d1["metadata"]["labels"]["ferry.io/environment"], "dev");
    assert_eq!(d1["metadata"]["labels"]["ferry.io/service"], "web");
    assert_eq!(d1["metadata"]["labels"]["ferry.io/version"], "1-0-0");
    assert_eq!(d1["metadata"]["labels"]["team"], "payments");
    let container = &d1["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/web:1");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["resources"]["requests"]["cpu"], "100m");
    assert_eq!(selected_set(&fake).as_deref(), Some("web-1-0-0"));
    assert_eq!(pod_names(&fake).len(), 3);

    let v2 = command(
        &system,
        &mut watch,
        deploy("2.0.0", "registry.example/web:2", 3),
    )
    .await;
    assert!(succeeded(&v2), "{v2:?}");
    assert_eq!(selected_set(&fake).as_deref(), Some("web-2-0-0"));
    until("the 1.0.0 Deployment removed", || {
        (deployment_names(&fake) == ["web-2-0-0"]).then_some(())
    })
    .await;

    fake.fail_pull("registry.example/web:3");
    let started = Instant::now();
    let v3 = command(
        &system,
        &mut watch,
        deploy("3.0.0", "registry.example/web:3", 3),
    )
    .await;
    let took = started.elapsed();
    match &v3 {
        EventBody::Failed { reason, .. } => {
            assert!(reason.contains("ErrImagePull"), "{reason}");
            assert!(reason.contains("failed to pull image"), "{reason}");
        }
        other => panic!("3.0.0 should fail: {other:?}"),
    }
    assert!(
        took < Duration::from_secs(10),
        "the pull failure took {took:?}, not at once (start_timeout is 20s)"
    );
    assert_eq!(
        selected_set(&fake).as_deref(),
        Some("web-2-0-0"),
        "2.0.0 keeps serving"
    );
    assert_eq!(
        deployment_names(&fake),
        ["web-2-0-0"],
        "the failed set is removed"
    );

    let back = command(
        &system,
        &mut watch,
        Action::Rollback {
            to: RollbackTarget::Version(Version::new("1.0.0").unwrap()),
            force: false,
            dry_run: false,
        },
    )
    .await;
    assert!(succeeded(&back), "{back:?}");
    assert_eq!(selected_set(&fake).as_deref(), Some("web-1-0-0"));
    until("only 1.0.0 left", || {
        (deployment_names(&fake) == ["web-1-0-0"]).then_some(())
    })
    .await;

    let scaled = command(&system, &mut watch, Action::Scale { replicas: 5 }).await;
    assert!(succeeded(&scaled), "{scaled:?}");
    let d = fake.object("deployments", NS, "web-1-0-0").unwrap();
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(d["status"]["readyReplicas"], 5);
    until("5 pods", || (pod_names(&fake).len() == 5).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_a_restarted_agent_adopts_the_running_objects_without_new_pods() {
    let system = System::without_controller();
    let (fake, mut agent) = start(&system).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let v1 = command(
        &system,
        &mut watch,
        deploy("1.0.0", "registry.example/web:1", 3),
    )
    .await;
    assert!(succeeded(&v1), "{v1:?}");
    let pods = pod_names(&fake);
    let deployment_rv =
        fake.object("deployments", NS, "web-1-0-0").unwrap()["metadata"]["resourceVersion"].clone();
    let service_rv =
        fake.object("services", NS, "web").unwrap()["metadata"]["resourceVersion"].clone();

    agent.kill_hard();
    // The first heartbeat comes after the agent restored its services.
    agent.start_again().await;
    assert_eq!(pod_names(&fake), pods, "no pod was replaced");
    let d = fake.object("deployments", NS, "web-1-0-0").unwrap();
    assert_eq!(
        d["metadata"]["resourceVersion"], deployment_rv,
        "the Deployment was not written to"
    );
    assert_eq!(
        fake.object("services", NS, "web").unwrap()["metadata"]["resourceVersion"],
        service_rv,
        "nor the Service"
    );
    // It knows what it adopted: a scale acts on the adopted Deployment.
    let scaled = command(&system, &mut watch, Action::Scale { replicas: 4 }).await;
    assert!(succeeded(&scaled), "{scaled:?}");
    assert_eq!(
        fake.object("deployments", NS, "web-1-0-0").unwrap()["spec"]["replicas"],
        4
    );
    assert_eq!(
        pod_names(&fake).iter().filter(|p| pods.contains(p)).count(),
        3,
        "the adopted pods still run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_an_object_not_created_by_ferry_is_left_alone() {
    let system = System::without_controller();
    let (fake, _agent) = start(&system).await;
    let foreign = json!({
        "metadata": { "name": "web-1-0-0", "labels": { "app": "someone-else" } },
        "spec": { "replicas": 7, "selector": { "matchLabels": { "app": "someone-else" } },
                  "template": { "metadata": { "labels": { "app": "someone-else" } }, "spec": { "containers": [{ "name": "x", "image": "other:1" }] } } }
    });
    fake.insert("deployments", NS, foreign);
    let before = fake.object("deployments", NS, "web-1-0-0").unwrap();
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let outcome = command(
        &system,
        &mut watch,
        deploy("1.0.0", "registry.example/web:1", 1),
    )
    .await;
    match &outcome {
        EventBody::Failed { reason, .. } => {
            assert!(reason.contains("not created by ferry"), "{reason}")
        }
        other => panic!("deploy over a foreign object should fail: {other:?}"),
    }
    assert_eq!(
        fake.object("deployments", NS, "web-1-0-0").unwrap(),
        before,
        "untouched"
    );
    assert!(fake.object("services", NS, "web").is_none());
}

fn kubectl_ready(test: &str) -> bool {
    let found = std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: kubectl is missing (scripts/test installs it: apt-get install -y kubectl)"
        );
        eprintln!("skipping {test}: kubectl is not installed (apt-get install -y kubectl)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_real_kubectl_lists_ferrys_deployment_and_reports_it_rolled_out() {
    if !kubectl_ready(
        "fake_apiserver_real_kubectl_lists_ferrys_deployment_and_reports_it_rolled_out",
    ) {
        return;
    }
    let system = System::without_controller();
    let (fake, _agent) = start(&system).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let v1 = command(
        &system,
        &mut watch,
        deploy("1.0.0", "registry.example/web:1", 2),
    )
    .await;
    assert!(succeeded(&v1), "{v1:?}");
    let kubeconfig = system.dir.path().join("kubeconfig");
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "--cache-dir",
                system.dir.path().join("kube-cache").to_str().unwrap(),
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list: Value =
        serde_json::from_str(&kubectl(&["get", "deployments", "-o", "json"])).unwrap();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-1-0-0"]);
    assert_eq!(
        list["items"][0]["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "ferry"
    );
    let status = kubectl(&["rollout", "status", "deployment/web-1-0-0", "--timeout=20s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    drop(fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_maintenance_without_a_maintenance_image_fails_with_the_reason() {
    let system = System::without_controller();
    let (fake, _agent) = start(&system).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let v1 = command(
        &system,
        &mut watch,
        deploy("1.0.0", "registry.example/web:1", 1),
    )
    .await;
    assert!(succeeded(&v1), "{v1:?}");
    let on = Action::Maintenance(ferry_protocol::command::MaintenanceMode::Enable {
        message: "back soon".into(),
        duration_secs: None,
    });
    match command(&system, &mut watch, on).await {
        EventBody::Failed { reason, .. } => {
            assert!(reason.contains("maintenance_image"), "{reason}")
        }
        other => panic!("maintenance without a responder image should fail: {other:?}"),
    }
    assert_eq!(
        selected_set(&fake).as_deref(),
        Some("web-1-0-0"),
        "the Service still routes to 1.0.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_blue_green_switches_the_service_keeps_the_old_set_and_switches_back() {
    let system = System::without_controller();
    let (fake, _agent) = start(&system).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let v1 = command(
        &system,
        &mut watch,
        deploy("1.0.0", "registry.example/web:1", 2),
    )
    .await;
    assert!(succeeded(&v1), "{v1:?}");
    let blue_pods = pod_names(&fake);

    let Action::Deploy {
        release, replicas, ..
    } = deploy("2.0.0", "registry.example/web:2", 2)
    else {
        unreachable!()
    };
    let green = Action::Deploy {
        release,
        replicas,
        health: None,
        approvals: Vec::new(),
        rollout: Some(Box::new(ferry_protocol::rollout::RolloutOptions {
            strategy: Some(ferry_protocol::rollout::Strategy::BlueGreen {
                keep_old_for_secs: 300,
            }),
            analysis: None,
        })),
        hotfix: false,
    };
    let v2 = command(&system, &mut watch, green).await;
    assert!(succeeded(&v2), "{v2:?}");
    assert_eq!(selected_set(&fake).as_deref(), Some("web-2-0-0"));
    assert_eq!(
        deployment_names(&fake),
        ["web-1-0-0", "web-2-0-0"],
        "the blue set is kept"
    );

    let back = command(&system, &mut watch, back_to_previous()).await;
    assert!(succeeded(&back), "{back:?}");
    assert_eq!(selected_set(&fake).as_deref(), Some("web-1-0-0"));
    let now = pod_names(&fake);
    assert!(
        blue_pods.iter().all(|p| now.contains(p)),
        "the switch back reused the kept pods: {blue_pods:?} vs {now:?}"
    );
    until("the green set removed", || {
        (deployment_names(&fake) == ["web-1-0-0"]).then_some(())
    })
    .await;
}

/// A deploy of `version` on `image` at `replicas` with `strategy`.
fn deploy_with(
    version: &str,
    image: &str,
    replicas: u32,
    strategy: ferry_protocol::rollout::Strategy,
) -> Action {
    Action::Deploy {
        release: release(version, image),
        replicas: Some(replicas),
        health: None,
        approvals: Vec::new(),
        rollout: Some(Box::new(ferry_protocol::rollout::RolloutOptions {
            strategy: Some(strategy),
            analysis: None,
        })),
        hotfix: false,
    }
}

/// The `ferry.io/version` labels of the pods of Deployment `set`, sorted.
fn pod_versions(fake: &FakeApiServer, set: &str) -> Vec<String> {
    let mut versions: Vec<String> = fake
        .objects("pods", NS)
        .iter()
        .filter(|p| p["metadata"]["labels"]["ferry.io/set"] == set)
        .map(|p| {
            p["metadata"]["labels"]["ferry.io/version"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    versions.sort();
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_rolling_updates_the_deployment_in_place_at_the_batch_pace_and_undoes_an_unpullable_one(
) {
    let system = System::without_controller();
    let (fake, _agent) = start(&system).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let rolling = ferry_protocol::rollout::Strategy::Rolling {
        batch_size: 2,
        max_unavailable: 1,
    };
    let v1 = command(
        &system,
        &mut watch,
        deploy("1.0.0", "registry.example/web:1", 3),
    )
    .await;
    assert!(succeeded(&v1), "{v1:?}");

    let v2 = command(
        &system,
        &mut watch,
        deploy_with("2.0.0", "registry.example/web:2", 3, rolling.clone()),
    )
    .await;
    match &v2 {
        EventBody::Succeeded { detail, .. } => {
            assert!(detail.contains("in place"), "{detail}")
        }
        other => panic!("the rolling update failed: {other:?}"),
    }
    // One Deployment, updated in place: batches of 2 as 1 surge pod and 1
    // unavailable one.
    assert_eq!(deployment_names(&fake), ["web-1-0-0"]);
    let d = fake.object("deployments", NS, "web-1-0-0").unwrap();
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 1);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 1);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/web:2"
    );
    assert_eq!(d["metadata"]["labels"]["ferry.io/version"], "2-0-0");
    assert_eq!(d["status"]["updatedReplicas"], 3);
    assert_eq!(d["status"]["readyReplicas"], 3);
    assert_eq!(pod_versions(&fake, "web-1-0-0"), ["2-0-0"; 3], "v2 serves");
    assert_eq!(selected_set(&fake).as_deref(), Some("web-1-0-0"));
    // The controller moved at that pace, both versions serving meanwhile.
    let steps = fake.rollout_steps("web-1-0-0");
    let rolled: Vec<_> = steps.iter().skip_while(|s| s.updated == s.pods).collect();
    assert!(
        rolled.iter().any(|s| s.updated > 0 && s.updated < s.pods),
        "old and new pods side by side: {steps:?}"
    );
    assert!(
        steps.iter().all(|s| s.pods <= 3 + 1 && s.ready + 1 >= 3),
        "never above maxSurge nor below maxUnavailable: {steps:?}"
    );
    let rollout_events: Vec<_> = watch
        .seen
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Rollout(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert!(
        rollout_events.iter().any(|r| r.status.strategy
            == ferry_protocol::rollout::StrategyKind::Rolling
            && matches!(r.phase, ferry_protocol::rollout::RolloutPhase::Promoted)),
        "{rollout_events:?}"
    );

    // An image that cannot be pulled fails the update at once with the
    // reason, and the Deployment gets v2 back in place.
    fake.fail_pull("registry.example/web:3");
    let started = Instant::now();
    let v3 = command(
        &system,
        &mut watch,
        deploy_with("3.0.0", "registry.example/web:3", 3, rolling),
    )
    .await;
    match &v3 {
        EventBody::Failed {
            reason, serving, ..
        } => {
            assert!(reason.contains("ErrImagePull"), "{reason}");
            assert!(reason.contains("rolled back in place to 2.0.0"), "{reason}");
            assert_eq!(serving.as_ref().map(|v| v.as_str()), Some("2.0.0"));
        }
        other => panic!("3.0.0 should fail: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not at once: {:?}",
        started.elapsed()
    );
    let d = fake.object("deployments", NS, "web-1-0-0").unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/web:2"
    );
    until("only v2 pods, all ready", || {
        let d = fake.object("deployments", NS, "web-1-0-0")?;
        (pod_versions(&fake, "web-1-0-0") == ["2-0-0"; 3] && d["status"]["readyReplicas"] == 3)
            .then_some(())
    })
    .await;

    // A rollback to 1.0.0 goes back in place too, as `kubectl rollout undo`.
    let back = command(&system, &mut watch, back_to_previous()).await;
    assert!(succeeded(&back), "{back:?}");
    assert_eq!(deployment_names(&fake), ["web-1-0-0"]);
    assert_eq!(pod_versions(&fake, "web-1-0-0"), ["1-0-0"; 3]);
    assert_eq!(selected_set(&fake).as_deref(), Some("web-1-0-0"));
}

/// Prometheus scraping real ferry-sample processes as dev/web 1.0.0 (the
/// stable pods) and 2.0.0 (the canary's, `canary_env` added), each under
/// load: the fake cluster runs no pods, so these stand in for what its
/// Service would route to; the agent's provider reads the canary's signals
/// from Prometheus as it would in a cluster.
struct CanaryTraffic {
    prometheus: Prometheus,
    _samples: (Sample, Sample),
    loads: Vec<Load>,
}

impl CanaryTraffic {
    async fn start(canary_env: &[(&str, &str)]) -> CanaryTraffic {
        let prometheus = Prometheus::start(Discovery::File).await;
        let stable = Sample::start("web", "1.0.0", &[]).await;
        let canary = Sample::start("web", "2.0.0", canary_env).await;
        scrape(&prometheus, &[&stable, &canary]);
        let loads = vec![
            Load::start(stable.port, 2, Duration::from_millis(5)),
            Load::start(canary.port, 2, Duration::from_millis(5)),
        ];
        CanaryTraffic {
            prometheus,
            _samples: (stable, canary),
            loads,
        }
    }

    /// `web`'s metrics table, pointing at this Prometheus.
    fn metrics_toml(&self) -> String {
        format!(
            "\n[services.web.metrics]\nprovider = \"prometheus\"\nurl = \"{}\"\n",
            self.prometheus.url()
        )
    }

    async fn stop(self) {
        for load in self.loads {
            load.stop().await;
        }
    }
}

/// A canary deploy of 2.0.0 at 10 replicas with `steps` of `step_secs`,
/// analysed every 3 s (three scrapes, so every `rate()` has samples).
fn canary_deploy(steps: Vec<u8>, step_secs: u64) -> Action {
    Action::Deploy {
        release: release("2.0.0", "registry.example/web:2"),
        replicas: Some(10),
        health: None,
        approvals: Vec::new(),
        rollout: Some(Box::new(ferry_protocol::rollout::RolloutOptions {
            strategy: Some(ferry_protocol::rollout::Strategy::Canary { steps, step_secs }),
            analysis: Some(ferry_protocol::rollout::AnalysisOverride {
                interval_ms: Some(3000),
                failures_to_abort: Some(2),
                min_requests: Some(5),
                ..Default::default()
            }),
        })),
        hotfix: false,
    }
}

fn replicas_of(fake: &FakeApiServer, name: &str) -> Option<u64> {
    fake.object("deployments", NS, name)?["spec"]["replicas"].as_u64()
}

/// 1.0.0 deployed at 10 replicas, then a canary of 2.0.0 with steps of
/// 25% and 100% held 600 s each (only analysis, a kill or a control can end
/// the first): its command id and status once its first step started.
async fn canary_at_its_first_step(
    system: &System,
    client: &async_nats::Client,
    watch: &mut EventWatch,
) -> (uuid::Uuid, RolloutStatus) {
    let v1 = command(system, watch, deploy("1.0.0", "registry.example/web:1", 10)).await;
    assert!(succeeded(&v1), "{v1:?}");
    let id = send_command(
        client,
        &system.controller_key,
        "dev",
        "web",
        canary_deploy(vec![25, 100], 600),
    )
    .await;
    let step = watch
        .wait_for(WAIT, "the first canary step", |e| {
            matches!(&e.body, EventBody::Rollout(r)
                if matches!(r.phase, RolloutPhase::StepStarted) && r.status.step == 1)
        })
        .await;
    let EventBody::Rollout(step) = step.body else {
        unreachable!()
    };
    (id, step.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_a_canary_by_replica_ratio_is_rolled_back_by_a_breached_threshold() {
    let traffic = CanaryTraffic::start(&[("SAMPLE_ERROR_RATE", "0.2")]).await;
    let system = System::without_controller();
    let (fake, _agent) = start_with(&system, &traffic.metrics_toml()).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let (id, step) = canary_at_its_first_step(&system, &client, &mut watch).await;
    let stable_before = fake.object("deployments", NS, "web-1-0-0").unwrap();
    // 25% of 10 replicas: 2.5 rounds to 3 canary pods beside 7 stable ones,
    // 30% of the ready replicas, reported next to the 25% asked for.
    assert_eq!(step.weight_percent, 25);
    assert_eq!(step.weight_reached_percent, Some(30), "{step:?}");
    assert_eq!(replicas_of(&fake, "web-2-0-0-canary"), Some(3));
    assert_eq!(replicas_of(&fake, "web-1-0-0"), Some(7));
    let canary = fake.object("deployments", NS, "web-2-0-0-canary").unwrap();
    assert_eq!(canary["metadata"]["labels"]["ferry.io/track"], "canary");
    assert_eq!(
        canary["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/web:2"
    );
    assert_eq!(
        selected_set(&fake),
        None,
        "the Service selects both sets by the service label"
    );
    assert_eq!(
        fake.object("services", NS, "web").unwrap()["spec"]["selector"]["ferry.io/service"],
        "web"
    );

    let event = watch
        .wait_for(Duration::from_secs(60), "the canary's abort", |e| {
            aborted(e).is_some()
        })
        .await;
    assert_error_rate_rollback_at_step_1(aborted(&event).unwrap(), 25);
    let outcome = watch.outcome(id, WAIT).await;
    let (reason, serving) = failed_reason(&outcome.body);
    assert!(reason.contains("error rate"), "{reason}");
    assert_eq!(serving, Some("1.0.0"));
    // The canary's Deployment removed, the stable one as it was: its
    // template untouched, its replicas back, the Service on it alone.
    assert_eq!(deployment_names(&fake), ["web-1-0-0"]);
    assert_eq!(selected_set(&fake).as_deref(), Some("web-1-0-0"));
    let stable = fake.object("deployments", NS, "web-1-0-0").unwrap();
    assert_eq!(
        stable["spec"]["template"], stable_before["spec"]["template"],
        "the stable template is untouched"
    );
    assert_eq!(stable["spec"]["replicas"], 10);
    assert_eq!(stable["status"]["readyReplicas"], 10);
    assert_eq!(pod_versions(&fake, "web-1-0-0"), ["1-0-0"; 10]);
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_an_agent_killed_mid_canary_restores_the_stable_deployment_to_full_strength()
{
    let traffic = CanaryTraffic::start(&[]).await;
    let system = System::without_controller();
    let (fake, mut agent) = start_with(&system, &traffic.metrics_toml()).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    canary_at_its_first_step(&system, &client, &mut watch).await;
    assert_eq!(replicas_of(&fake, "web-1-0-0"), Some(7));
    assert_eq!(replicas_of(&fake, "web-2-0-0-canary"), Some(3));

    agent.kill_hard();
    // The first heartbeat comes after the agent restored its services.
    agent.start_again().await;
    assert_eq!(
        deployment_names(&fake),
        ["web-1-0-0"],
        "the unfinished canary's Deployment is removed"
    );
    assert_eq!(
        replicas_of(&fake, "web-1-0-0"),
        Some(10),
        "the stable Deployment is back at the recorded 10 replicas"
    );
    assert_eq!(selected_set(&fake).as_deref(), Some("web-1-0-0"));
    until("10 stable pods ready", || {
        let d = fake.object("deployments", NS, "web-1-0-0")?;
        (d["status"]["readyReplicas"] == 10).then_some(())
    })
    .await;
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_a_good_canary_by_replica_ratio_is_promoted_into_the_stable_deployment() {
    let traffic = CanaryTraffic::start(&[]).await;
    let system = System::without_controller();
    let (fake, _agent) = start_with(&system, &traffic.metrics_toml()).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let v1 = command(
        &system,
        &mut watch,
        deploy("1.0.0", "registry.example/web:1", 10),
    )
    .await;
    assert!(succeeded(&v1), "{v1:?}");
    let id = send_command(
        &client,
        &system.controller_key,
        "dev",
        "web",
        canary_deploy(vec![10, 100], 7),
    )
    .await;
    let outcome = watch.outcome(id, Duration::from_secs(90)).await;
    assert!(
        matches!(&outcome.body, EventBody::Succeeded { version: Some(v), .. } if v.as_str() == "2.0.0"),
        "{outcome:?}"
    );
    let steps: Vec<(u8, Option<u8>)> = watch
        .seen
        .iter()
        .filter(|e| e.command_id == Some(id))
        .filter_map(|e| match &e.body {
            EventBody::Rollout(r) if matches!(r.phase, RolloutPhase::StepStarted) => {
                Some((r.status.weight_percent, r.status.weight_reached_percent))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        [(10, Some(10)), (100, Some(100))],
        "1 canary and 9 stable, then all 10"
    );
    let conclusive = watch
        .seen
        .iter()
        .filter(|e| e.command_id == Some(id))
        .filter(|e| {
            matches!(
                rollout_phase(e),
                Some(RolloutPhase::Analysed {
                    conclusive: true,
                    ..
                })
            )
        })
        .count();
    assert!(conclusive >= 2, "Prometheus gave verdicts ({conclusive})");
    // Promoted: the stable Deployment took the new image, the canary's went.
    assert_eq!(deployment_names(&fake), ["web-1-0-0"]);
    assert_eq!(selected_set(&fake).as_deref(), Some("web-1-0-0"));
    let stable = fake.object("deployments", NS, "web-1-0-0").unwrap();
    assert_eq!(
        stable["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/web:2"
    );
    assert_eq!(stable["spec"]["replicas"], 10);
    assert_eq!(pod_versions(&fake, "web-1-0-0"), ["2-0-0"; 10]);
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_a_rolling_update_breaching_its_verification_window_is_rolled_back_in_place()
{
    let traffic = CanaryTraffic::start(&[("SAMPLE_ERROR_RATE", "0.2")]).await;
    let system = System::without_controller();
    let (fake, _agent) = start_with(&system, &traffic.metrics_toml()).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let v1 = command(
        &system,
        &mut watch,
        deploy("1.0.0", "registry.example/web:1", 3),
    )
    .await;
    assert!(succeeded(&v1), "{v1:?}");
    let Action::Deploy { rollout, .. } = canary_deploy(Vec::new(), 0) else {
        unreachable!()
    };
    let mut analysis = rollout.unwrap().analysis.unwrap();
    analysis.verify_for_secs = Some(60);
    let rolling = Action::Deploy {
        release: release("2.0.0", "registry.example/web:2"),
        replicas: Some(3),
        health: None,
        approvals: Vec::new(),
        rollout: Some(Box::new(ferry_protocol::rollout::RolloutOptions {
            strategy: Some(ferry_protocol::rollout::Strategy::Rolling {
                batch_size: 1,
                max_unavailable: 0,
            }),
            analysis: Some(analysis),
        })),
        hotfix: false,
    };
    let started = Instant::now();
    match command(&system, &mut watch, rolling).await {
        EventBody::Failed {
            reason, serving, ..
        } => {
            assert!(
                reason.contains("verification after the rolling switch"),
                "{reason}"
            );
            assert!(reason.contains("error rate"), "{reason}");
            assert!(reason.contains("rolled back to 1.0.0"), "{reason}");
            assert_eq!(serving.as_ref().map(|v| v.as_str()), Some("1.0.0"));
        }
        other => panic!("the breach should roll back: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the breach ended the 60 s window early ({:?})",
        started.elapsed()
    );
    // Back in place on the same Deployment, as `kubectl rollout undo`.
    assert_eq!(deployment_names(&fake), ["web-1-0-0"]);
    let d = fake.object("deployments", NS, "web-1-0-0").unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/web:1"
    );
    assert_eq!(pod_versions(&fake, "web-1-0-0"), ["1-0-0"; 3]);
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_health_events_report_ready_replicas_restarts_and_a_crash_loop_s_reason() {
    let system = System::without_controller();
    let (fake, _agent) = start(&system).await;
    let client = system.nats.client().await;
    let mut watch = EventWatch::new(&client, "dev", "web").await;
    let v1 = command(
        &system,
        &mut watch,
        deploy("1.0.0", "registry.example/web:1", 3),
    )
    .await;
    assert!(succeeded(&v1), "{v1:?}");
    watch
        .wait_for(WAIT, "a health event with 3 of 3 ready", |e| {
            matches!(&e.body, EventBody::Health(h) if h.desired == 3 && h.healthy == 3 && h.replicas.len() == 3)
        })
        .await;
    let crashing = pod_names(&fake)[0].clone();
    fake.crash_loop(NS, &crashing, 4);
    let event = watch
        .wait_for(
            WAIT,
            "a health event with the crash loop",
            |e| matches!(&e.body, EventBody::Health(h) if h.healthy == 2),
        )
        .await;
    let EventBody::Health(health) = &event.body else {
        unreachable!()
    };
    assert_eq!(health.desired, 3);
    assert_eq!(health.version.as_ref().map(|v| v.as_str()), Some("1.0.0"));
    let replica = health
        .replicas
        .iter()
        .find(|r| r.replica == crashing)
        .unwrap_or_else(|| panic!("{crashing} in {health:?}"));
    assert!(!replica.healthy);
    assert_eq!(replica.restarts, 4);
    assert_eq!(
        replica.reason.as_deref(),
        Some("CrashLoopBackOff: back-off 40s restarting failed container")
    );
    assert_eq!(replica.version.as_str(), "1.0.0");
    assert!(health
        .replicas
        .iter()
        .filter(|r| r.replica != crashing)
        .all(|r| r.healthy && r.restarts == 0 && r.reason.is_none()));
}

/// A Deployment a real API server would refuse: `replicas` a string and the
/// one container without its required `name`.
fn invalid_deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "broken", "namespace": NS},
        "spec": {
            "replicas": "three",
            "selector": {"matchLabels": {"app": "broken"}},
            "template": {
                "metadata": {"labels": {"app": "broken"}},
                "spec": {"containers": [{"image": "ferry-sample:1.0.0"}]}
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_refuses_an_invalid_deployment_created_or_patched_as_a_real_one_does() {
    let fake = FakeApiServer::start(Duration::from_millis(200)).await;
    let http = reqwest::Client::new();
    let base = format!(
        "http://{}/apis/apps/v1/namespaces/{NS}/deployments",
        fake.addr
    );

    // Created invalid: 422 Invalid, a Status naming each field, nothing stored.
    let answer = http
        .post(&base)
        .json(&invalid_deployment())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 422);
    let status: Value = answer.json().await.unwrap();
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "Invalid", "{status}");
    assert_eq!(status["code"], 422, "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.starts_with("Deployment.apps \"broken\" is invalid: ["),
        "{message}"
    );
    assert!(
        message.contains("spec.replicas: Invalid value: \"three\""),
        "{message}"
    );
    assert!(
        message.contains("spec.template.spec.containers[0].name: Required value"),
        "{message}"
    );
    let fields: Vec<&str> = status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["spec.replicas", "spec.template.spec.containers[0].name"],
        "{status}"
    );
    assert_eq!(status["details"]["kind"], "Deployment");
    assert_eq!(status["details"]["group"], "apps");
    assert!(fake.object("deployments", NS, "broken").is_none());

    // The same Deployment made valid is created; a patch that makes it
    // invalid again is refused and leaves it as it was.
    let mut valid = invalid_deployment();
    valid["spec"]["replicas"] = json!(3);
    valid["spec"]["template"]["spec"]["containers"][0]["name"] = json!("web");
    let answer = http.post(&base).json(&valid).send().await.unwrap();
    assert_eq!(
        answer.status().as_u16(),
        201,
        "{}",
        answer.text().await.unwrap()
    );
    let answer = http
        .patch(format!("{base}/broken"))
        .header("content-type", "application/merge-patch+json")
        .body(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": 7}]}}}})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 422);
    let status: Value = answer.json().await.unwrap();
    assert_eq!(status["reason"], "Invalid", "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"], "spec.template.spec.containers[0].image",
        "{status}"
    );
    let stored = fake.object("deployments", NS, "broken").unwrap();
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0]["image"],
        "ferry-sample:1.0.0"
    );
    assert_eq!(stored["spec"]["replicas"], 3);
}

/// `(plural, namespace, name)` of each object of a manifest: its documents'
/// top-level `kind:` and `metadata:`'s `name:` and `namespace:` (the
/// manifests in deploy/kubernetes/ are plain block YAML).
fn manifest_objects(text: &str) -> Vec<(String, String, String)> {
    let mut objects = Vec::new();
    for document in text.split("\n---") {
        let (mut kind, mut name, mut namespace) = (None, None, String::new());
        let mut in_metadata = false;
        for line in document.lines() {
            if !line.starts_with(' ') {
                in_metadata = line.trim_end() == "metadata:";
            }
            if let Some(value) = line.strip_prefix("kind: ") {
                kind = Some(value.trim().to_lowercase() + "s");
            } else if in_metadata {
                if let Some(value) = line.strip_prefix("  name: ") {
                    name = Some(value.trim().to_owned());
                } else if let Some(value) = line.strip_prefix("  namespace: ") {
                    namespace = value.trim().to_owned();
                }
            }
        }
        if let (Some(kind), Some(name)) = (kind, name) {
            objects.push((kind, namespace, name));
        }
    }
    objects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_apiserver_real_kubectl_applies_every_object_of_deploy_kubernetes() {
    if !kubectl_ready("fake_apiserver_real_kubectl_applies_every_object_of_deploy_kubernetes") {
        return;
    }
    let fake = FakeApiServer::start(Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(dir.path(), NS);
    let manifests_dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    // The namespaces first, as a real cluster needs them before the objects
    // in them; then every other manifest.
    let mut manifests: Vec<_> = std::fs::read_dir(&manifests_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    manifests.sort_by_key(|path| (!path.ends_with("namespaces.yaml"), path.clone()));
    let mut expected = Vec::new();
    for manifest in &manifests {
        expected.extend(manifest_objects(
            &std::fs::read_to_string(manifest).unwrap(),
        ));
    }
    for kind in [
        "namespaces",
        "serviceaccounts",
        "roles",
        "rolebindings",
        "configmaps",
        "secrets",
        "deployments",
    ] {
        assert!(
            expected.iter().any(|(k, _, _)| k == kind),
            "no {kind} found in {manifests:?}: {expected:?}"
        );
    }
    // Client-side validation off: the fake validates every object against
    // the Kubernetes schemas itself and answers 422 for an invalid one, as a
    // real API server does (scripts/check-manifests checks the same files
    // strictly, offline, against two versions' schemas).
    let mut command = std::process::Command::new("kubectl");
    command
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--cache-dir")
        .arg(dir.path().join("kube-cache"))
        .args(["apply", "--validate=false", "-o", "name"]);
    for manifest in &manifests {
        command.arg("-f").arg(manifest);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl apply: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().count(),
        expected.len(),
        "one line per object applied: {stdout}"
    );
    for (kind, namespace, name) in &expected {
        let stored = fake.object(kind, namespace, name);
        assert!(
            stored.is_some(),
            "{kind} {namespace}/{name} was not accepted: {stdout}"
        );
    }
    // What makes the agent startable: the image's own non-root user, a
    // pinned image and the NATS password from the Secret, as a file.
    let agent = fake.object("deployments", NS, "ferry-agent").unwrap();
    let pod = &agent["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], json!(10001), "{pod}");
    assert_eq!(pod["securityContext"]["runAsGroup"], json!(10001), "{pod}");
    assert_eq!(pod["containers"][0]["image"], json!("ferry-agent:0.1.0"));
    assert_eq!(
        pod["containers"][0]["imagePullPolicy"],
        json!("IfNotPresent")
    );
    let secret = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|volume| volume["secret"]["secretName"].as_str())
        .expect("a Secret volume");
    assert!(fake.object("secrets", NS, secret).is_some(), "{secret}");
}
