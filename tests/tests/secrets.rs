//! Secret release variables: the replica gets the value; ferry shows it to
//! nobody (CLI output, API replies, events, history).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use ferry_e2e::{assert_ok, bin, free_port, wait_serving, System, WAIT};
use futures::StreamExt;

const SECRET: &str = "s3cr3t-value-7f1c";

/// Every message on `subject` from now on, as text.
async fn record(client: &async_nats::Client, subject: &str) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut sub = client.subscribe(subject.to_owned()).await.unwrap();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let text = String::from_utf8_lossy(&m.payload).into_owned();
            sink.lock().unwrap().push(format!("{}: {text}", m.subject));
        }
    });
    seen
}

/// Whether a running process has `NAME=VALUE` in its environment.
fn some_process_has(var: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("environ"))
            .map(|env| env.split(|b| *b == 0).any(|kv| kv == var.as_bytes()))
            .unwrap_or(false)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_variables_reach_the_replica_and_nothing_ferry_shows() {
    let mut system = System::start().await;
    let port = free_port();
    system.start_agent("dev", port).await;
    let client = system.nats.client().await;
    let events = record(&client, "ferry.v1.evt.>").await;
    let agent = record(&client, "ferry.v1.agent.>").await;
    let history = record(&client, "ferry.v1.history.>").await;
    client.flush().await.unwrap();

    let sample = bin("ferry-sample");
    let secret = format!("API_TOKEN={SECRET}");
    let out = system
        .cli_async(&[
            "release",
            "publish",
            "--service",
            "web",
            "--version",
            "1.0.0",
            "--artifact",
            sample.to_str().unwrap(),
            "--env",
            "MODE=plain",
            "--secret-env",
            &secret,
        ])
        .await;
    assert_ok(&out, "release publish");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET));
    wait_serving(port, "1.0.0", WAIT).await;
    assert!(
        some_process_has(&secret),
        "the replica did not get API_TOKEN"
    );

    // The releases listing shows the variable, redacted, beside plain ones.
    let out = system
        .cli_async(&["releases", "--service", "web", "--output", "json"])
        .await;
    assert_ok(&out, "releases");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains("<secret>") && listed.contains("plain"),
        "{listed}"
    );
    for args in [
        &["releases", "--service", "web", "--output", "json"][..],
        &["releases", "--service", "web"],
        &["history", "-s", "web", "--output", "json"],
        &["history", "-s", "web"],
        &["status", "--output", "json"],
        &["status"],
    ] {
        let out = system.cli_async(args).await;
        assert_ok(&out, &args.join(" "));
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(
                !text.contains(SECRET),
                "ferry {args:?} showed the secret: {text}"
            );
        }
    }
    // A heartbeat after the deploy has gone out, so the recorders saw the deploy's aftermath.
    let deadline = tokio::time::Instant::now() + WAIT;
    while agent.lock().unwrap().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no heartbeats");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for (what, seen) in [
        ("events", &events),
        ("agent events", &agent),
        ("history", &history),
    ] {
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty(), "no {what} recorded");
        for message in seen.iter() {
            assert!(
                !message.contains(SECRET),
                "{what} carried the secret: {message}"
            );
        }
    }
    system.shutdown().await;
}
