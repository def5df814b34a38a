//! Leak check: 10,000 commands (deploy, scale and rollback cycles on the
//! process runtime) through one `ferry-agent` process, the shipped build
//! (linked statically, `scripts/build-static`), printing its resident
//! memory when idle, after the first 100 commands and after all of them,
//! with its open file descriptors and child processes at each point; and,
//! for reference, the idle memory of the dynamically linked build.
//! Run with `cargo bench -p ferry-e2e --bench agent_soak`
//! (`FERRY_SOAK_COMMANDS=N` for a shorter run).

// A benchmark that cannot set up must stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferry_e2e::bars::{bars_or_exit, Bars};
use std::time::Instant;

use ferry_e2e::footprint::Footprint;
use ferry_e2e::{
    bin, free_port, sample_release, send_command, static_bin, AgentProcess, System, WAIT,
};
use ferry_protocol::command::{Action, ReleaseSpec, RollbackTarget};
use ferry_protocol::event::{EventBody, ServiceEvent};
use ferry_protocol::{Envelope, Version};
use futures::StreamExt;

/// What the issue asks: the footprint after the first 100 commands is the
/// reference the end is compared with.
const WARM: usize = 100;
const IDLE_RSS_BAR_BYTES: u64 = 10 * 1024 * 1024;
const GROWTH_BAR: f64 = 0.10;

/// The command cycle: deploy, scale up, scale down, roll back.
fn action(i: usize, _artifact: &str) -> Action {
    let deploy = |version: &str| Action::Deploy {
        release: sample_release(version, &[]),
        replicas: Some(1),
        health: None,
        approvals: Vec::new(),
        rollout: None,
        hotfix: false,
    };
    match i % 4 {
        0 => deploy("2.0.0"),
        1 => Action::Scale { replicas: 2 },
        2 => Action::Scale { replicas: 1 },
        _ => Action::Rollback {
            to: RollbackTarget::Previous,
            force: false,
            dry_run: false,
        },
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut bars = bars_or_exit("agent_soak");
    measure(&mut bars).await;
    bars.finish()
}

async fn measure(bars: &mut Bars) {
    let total: usize = std::env::var("FERRY_SOAK_COMMANDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let system = System::without_controller();
    let sample = bin("ferry-sample");
    let artifact = sample.to_str().unwrap().to_owned();
    let services = format!(
        "[services.web]\ncommand = [\"{{artifact}}\"]\nport = {}\nreplicas = 1\nstop_timeout = \"2s\"\n\n[services.web.health]\npath = \"/health\"\ninterval = \"20ms\"\ntimeout = \"1s\"\nfailure_threshold = 2\nstart_timeout = \"10s\"\n",
        free_port()
    );
    // The dynamically linked build (`cargo build --release`) for reference:
    // idle only, stopped before the shipped build starts on the same state.
    let dynamic_idle = {
        let agent = AgentProcess::start(&system, &services).await;
        Footprint::of(agent.pid())
    };
    // The shipped build, linked statically (scripts/build-static): what the
    // images carry and a host installs; it runs the commands.
    let shipped = static_bin("ferry-agent", "ferry-agent");
    let agent = AgentProcess::start_binary(&system, &shipped, &services).await;
    let pid = agent.pid();
    let client = system.nats.client().await;
    let mut outcomes = client
        .subscribe("ferry.v1.evt.dev.web.outcome")
        .await
        .unwrap();
    client.flush().await.unwrap();

    let mut failures = 0usize;
    let key = &system.controller_key;
    let idle = Footprint::of(pid);
    // The first version, so the cycle always has a previous one to go back to.
    failures += run(
        &client,
        key,
        &mut outcomes,
        Action::Deploy {
            release: ReleaseSpec {
                version: Version::new("1.0.0").unwrap(),
                artifact: artifact.clone(),
                digest: None,
                env: Default::default(),
            },
            replicas: Some(1),
            health: None,
            approvals: Vec::new(),
            rollout: None,
            hotfix: false,
        },
    )
    .await as usize;
    let started = Instant::now();
    let mut warm = None;
    for i in 0..total {
        failures += run(&client, key, &mut outcomes, action(i, &artifact)).await as usize;
        if i + 1 == WARM.min(total) {
            warm = Some(Footprint::of(pid));
        }
        if (i + 1) % 1000 == 0 {
            eprintln!("agent_soak: {} commands, {:?}", i + 1, started.elapsed());
        }
    }
    let end = Footprint::of(pid);
    let warm = warm.unwrap();
    let elapsed = started.elapsed();

    println!(
        "agent_soak: {} commands (+1 first deploy) in {:.0} s, {failures} not succeeded",
        total,
        elapsed.as_secs_f64()
    );
    println!(
        "{:<34} {:>8} {:>9} {:>9} {:>9}",
        "", "RSS MiB", "anon MiB", "open fds", "children"
    );
    dynamic_idle.row("idle, dynamically linked build");
    idle.row("idle, before any command");
    warm.row(&format!("after the first {WARM} commands"));
    end.row(&format!("after all {total} commands"));
    let growth = end.rss_bytes as f64 / warm.rss_bytes as f64 - 1.0;
    println!(
        "idle RSS {:.1} MiB, the shipped static build (bar: at most 10 MiB): {}; the dynamic build {:.1} MiB",
        idle.rss_mib(),
        verdict(bars.at_most(
            "idle RSS, MiB",
            idle.rss_mib(),
            IDLE_RSS_BAR_BYTES as f64 / (1024.0 * 1024.0)
        )),
        dynamic_idle.rss_mib()
    );
    println!(
        "RSS growth from {WARM} to {total} commands {:+.1}% (bar: within 10%): {}",
        growth * 100.0,
        verdict(bars.at_most("RSS growth, fraction", growth.abs(), GROWTH_BAR))
    );
    println!(
        "file descriptors {} -> {}, child processes {} -> {} (bar: no growth): {}",
        warm.open_fds,
        end.open_fds,
        warm.children,
        end.children,
        verdict(
            bars.at_most(
                "open fds after all commands",
                end.open_fds as f64,
                warm.open_fds as f64
            ) & bars.at_most(
                "child processes after all commands",
                end.children as f64,
                warm.children as f64
            )
        )
    );
    println!("commands not succeeded: {failures}");
    bars.at_most("commands not succeeded", failures as f64, 0.0);
}

/// Sends one signed command and waits for its outcome; true when it did not
/// succeed (and says why on stderr).
async fn run(
    client: &async_nats::Client,
    key: &ferry_protocol::SigningKey,
    outcomes: &mut async_nats::Subscriber,
    action: Action,
) -> bool {
    let id = send_command(client, key, "dev", "web", action).await;
    loop {
        let message = tokio::time::timeout(WAIT, outcomes.next())
            .await
            .expect("an outcome in time")
            .unwrap();
        let event = Envelope::<ServiceEvent>::decode(&message.payload).unwrap();
        if event.data.command_id != Some(id) {
            continue;
        }
        let failed = !matches!(event.data.body, EventBody::Succeeded { .. });
        if failed {
            eprintln!("command {id} did not succeed: {:?}", event.data.body);
        }
        return failed;
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "OVER"
    }
}
