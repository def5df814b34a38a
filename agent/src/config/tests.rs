//! Tests of reading and checking the agent's configuration.

use std::time::Duration;

use ferry_protocol::rollout::Strategy;
use ferry_protocol::ServiceName;

use super::*;
use ferry_analysis::Thresholds;

#[test]
fn nats_user_needs_a_readable_password_file_and_the_inbox_defaults_per_environment() {
    let key = ferry_protocol::SigningKey::generate().public_key();
    let base = format!(
        "environment = \"production\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{key}\"]\n[services.web]\nport = 18080\n"
    );
    let cfg = from_toml(&base).expect("no NATS user is fine");
    assert_eq!(cfg.nats_inbox_prefix, "_INBOX_ferry_agent_production");
    assert_eq!(cfg.nats_user, None);

    let Err(Error::Config(problems)) =
        from_toml(&format!("nats_user = \"ferry-agent-production\"\n{base}"))
    else {
        panic!("accepted a user without a password file");
    };
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("nats_user: set nats_password_file")),
        "{problems:?}"
    );

    let Err(Error::Config(problems)) = from_toml(&format!(
        "nats_user = \"u\"\nnats_password_file = \"/nonexistent/pw\"\nnats_inbox_prefix = \"_INBOX.>\"\n{base}"
    )) else {
        panic!("accepted a missing password file and a wildcard prefix");
    };
    let joined = problems.join("\n");
    assert!(
        joined.contains("nats_password_file: /nonexistent/pw is not a readable file"),
        "{joined}"
    );
    assert!(
        joined.contains("nats_inbox_prefix: \"_INBOX.>\""),
        "{joined}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret-value\n").unwrap();
    let cfg = from_toml(&format!(
        "nats_user = \"ferry-agent-production\"\nnats_password_file = {:?}\n{base}",
        file.display().to_string()
    ))
    .expect("user and password file");
    assert_eq!(cfg.nats_user.as_deref(), Some("ferry-agent-production"));
    assert!(
        !format!("{cfg:?}").contains("s3cret-value"),
        "the configuration holds the path, never the password"
    );
}

#[test]
fn approval_gate_settings_are_checked() {
    let controller = ferry_protocol::SigningKey::generate().public_key();
    let reviewer = ferry_protocol::SigningKey::generate().public_key();
    let text = format!(
        "environment = \"production\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{controller}\"]\napprovals_required = 2\nreviewer_keys = [\"{reviewer}\", \"{controller}\", \"nope\"]\n"
    );
    let Err(Error::Config(problems)) = from_toml(&text) else {
        panic!("accepted a bad approval gate");
    };
    let joined = problems.join("\n");
    assert!(
        joined.contains("reviewer_keys: key error: \"nope\""),
        "{joined}"
    );
    assert!(joined.contains("both a reviewer"), "{joined}");
    let text = format!(
        "environment = \"production\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{controller}\"]\napprovals_required = 2\nreviewer_keys = [\"{reviewer}\"]\n"
    );
    let Err(Error::Config(problems)) = from_toml(&text) else {
        panic!("accepted 2 approvals from 1 reviewer");
    };
    assert!(
        problems[0].starts_with("approvals_required"),
        "{problems:?}"
    );
    let other = ferry_protocol::SigningKey::generate().public_key();
    let text = format!(
        "environment = \"production\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{controller}\"]\napprovals_required = 2\nreviewer_keys = [\"{reviewer}\", \"{other}\"]\n[services.web]\nruntime = \"docker\"\nport = 18080\n"
    );
    let config = from_toml(&text).unwrap();
    assert_eq!(config.approvals_required, 2);
    assert_eq!(config.reviewers().unwrap().len(), 2);
}

#[test]
fn a_complete_file_resolves() {
    let key = ferry_protocol::SigningKey::generate().public_key();
    let cfg = from_toml(&format!(
        r#"
        environment = "dev"
        state_dir = "/tmp/x"
        trusted_keys = ["{key}"]
        [services.web]
        command = ["{{artifact}}", "--port", "{{port}}"]
        port = 18080
        replicas = 2
        [services.web.health]
        path = "/healthz"
        start_timeout = "5s"
        "#
    ))
    .unwrap();
    let web = &cfg.services[&ServiceName::new("web").unwrap()];
    assert_eq!(web.replicas, 2);
    assert_eq!(web.listen.port(), 18080);
    assert_eq!(web.health.path, "/healthz");
    assert_eq!(web.health.start_timeout, Duration::from_secs(5));
    assert_eq!(cfg.heartbeat_interval, Duration::from_secs(5));
}

#[test]
fn strategy_and_analysis_resolve_per_service_with_the_seeds_defaults() {
    let key = ferry_protocol::SigningKey::generate().public_key();
    let cfg = from_toml(&format!(
        r#"
        environment = "production"
        state_dir = "/tmp/x"
        trusted_keys = ["{key}"]
        [services.web]
        port = 18080
        [services.web.strategy]
        type = "canary"
        steps = [10, 35, 60, 85, 100]
        step_secs = 30
        [services.web.analysis]
        error_rate_percent = 2.0
        interval_ms = 2000
        [services.api]
        port = 18081
        [services.api.strategy]
        type = "blue_green"
        "#
    ))
    .unwrap();
    let web = &cfg.services[&ServiceName::new("web").unwrap()];
    assert_eq!(web.strategy, Strategy::default_canary());
    assert_eq!(web.analysis.error_rate_percent, 2.0);
    assert_eq!(web.analysis.interval, Duration::from_secs(2));
    assert_eq!(web.analysis.p95_ms, 2000.0, "the rest keeps the defaults");
    let api = &cfg.services[&ServiceName::new("api").unwrap()];
    assert_eq!(
        api.strategy,
        Strategy::BlueGreen {
            keep_old_for_secs: 60
        }
    );
    assert_eq!(api.analysis, Thresholds::default());

    let bad = from_toml(&format!(
        r#"
        environment = "production"
        state_dir = "/tmp/x"
        trusted_keys = ["{key}"]
        [services.web]
        port = 18080
        [services.web.strategy]
        type = "canary"
        steps = [50, 10]
        "#
    ))
    .unwrap_err();
    assert!(bad.to_string().contains("services.web.strategy"), "{bad}");
}

#[test]
fn a_docker_service_resolves_its_container_settings() {
    let key = ferry_protocol::SigningKey::generate().public_key();
    let cfg = from_toml(&format!(
        r#"
        environment = "dev"
        state_dir = "/tmp/x"
        trusted_keys = ["{key}"]
        [services.web]
        runtime = "docker"
        port = 18080
        container_port = 9000
        memory = "256m"
        cpus = 1.5
        network = "ferry"
        labels = {{ team = "checkout" }}
        [services.api]
        runtime = "docker"
        port = 18081
        "#
    ))
    .unwrap();
    let web = &cfg.services[&ServiceName::new("web").unwrap()];
    assert_eq!(web.runtime, RuntimeKind::Docker);
    assert_eq!(web.docker.container_port, 9000);
    assert_eq!(web.docker.memory, Some(256 << 20));
    assert_eq!(web.docker.nano_cpus, Some(1_500_000_000));
    assert_eq!(web.docker.network.as_deref(), Some("ferry"));
    assert_eq!(web.docker.labels["team"], "checkout");
    let api = &cfg.services[&ServiceName::new("api").unwrap()];
    assert_eq!(api.docker, DockerOptions::default());
    assert_eq!(api.docker.container_port, 8080);
}

#[test]
fn memory_sizes_parse_in_binary_units() {
    assert_eq!(parse_memory("1048576"), Some(1 << 20));
    assert_eq!(parse_memory("512k"), Some(512 << 10));
    assert_eq!(parse_memory("256m"), Some(256 << 20));
    assert_eq!(parse_memory("256MB"), Some(256 << 20));
    assert_eq!(parse_memory("2g"), Some(2 << 30));
    for bad in ["", "m", "-1m", "1.5g", "12x", "99999999999999999g"] {
        assert_eq!(parse_memory(bad), None, "{bad:?}");
    }
}

#[test]
fn docker_settings_problems_are_listed_at_once() {
    let key = ferry_protocol::SigningKey::generate().public_key();
    let err = from_toml(&format!(
        r#"
        environment = "dev"
        state_dir = "/tmp/x"
        trusted_keys = ["{key}"]
        [services.web]
        runtime = "docker"
        port = 18080
        command = ["x"]
        container_port = 0
        memory = "lots"
        cpus = 0.0
        network = ""
        labels = {{ "io.ferry.service" = "other" }}
        [services.proc]
        port = 18081
        memory = "256m"
        "#
    ))
    .unwrap_err();
    let Error::Config(problems) = err else {
        panic!("{err}")
    };
    let text = problems.join("\n");
    for expected in [
        "services.web.command: not used",
        "services.web.container_port",
        "services.web.memory",
        "services.web.cpus",
        "services.web.network",
        "services.web.labels: \"io.ferry.service\" is reserved",
        "services.proc.memory: only used with runtime = \"docker\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn every_problem_is_listed_at_once() {
    let err = from_toml(
        r#"
        environment = "Dev Env"
        heartbeat_interval = "soon"
        trusted_keys = ["not-a-key"]
        [services.web]
        runtime = "mainframe"
        replicas = 0
        [services.web.health]
        path = "health"
        [services."Bad.Name"]
        port = 1
        "#,
    )
    .unwrap_err();
    let Error::Config(problems) = err else {
        panic!("{err}")
    };
    let text = problems.join("\n");
    for expected in [
        "environment:",
        "state_dir: missing",
        "trusted_keys:",
        "heartbeat_interval",
        "services.web.runtime",
        "services.web.replicas",
        "services.web: needs port",
        "services.web.health.path",
        "not a valid service name",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(problems.len() >= 9, "{text}");
}

#[test]
fn registry_credentials_come_from_a_file_and_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("registry.pass");
    std::fs::write(&secret, "s3cret-token\n").unwrap();
    let key = ferry_protocol::SigningKey::generate().public_key();
    let base = format!(
        "environment = \"dev\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{key}\"]\n[services.web]\nruntime = \"docker\"\nport = 18080\n"
    );
    let cfg = from_toml(&format!(
        "{base}pull = true\nregistry_username = \"ci\"\nregistry_password_file = \"{}\"\n",
        secret.display()
    ))
    .unwrap();
    let web = &cfg.services[&ServiceName::new("web").unwrap()];
    let auth = web.docker.registry.as_ref().unwrap();
    assert_eq!(auth.password, "s3cret-token");
    assert!(
        !format!("{cfg:?}").contains("s3cret"),
        "the password is redacted"
    );

    let Err(Error::Config(problems)) = from_toml(&format!("{base}registry_username = \"ci\"\n"))
    else {
        panic!("a user name without a password file is refused")
    };
    assert!(
        problems.iter().any(|p| p.contains("go together")),
        "{problems:?}"
    );
}

#[test]
fn a_metrics_provider_resolves_per_service_with_default_queries() {
    let key = ferry_protocol::SigningKey::generate().public_key();
    let cfg = from_toml(&format!(
        r#"
        environment = "dev"
        state_dir = "/tmp/x"
        trusted_keys = ["{key}"]
        [services.web]
        port = 18080
        [services.web.metrics]
        provider = "prometheus"
        url = "http://127.0.0.1:9090/"
        p95_query = 'histogram_quantile(0.95, sum by (le) (rate(http_seconds_bucket{{app="{{service}}",v="{{version}}"}}[{{interval}}])))'
        [services.api]
        port = 18081
        "#
    ))
    .unwrap();
    let web = &cfg.services[&ServiceName::new("web").unwrap()];
    let MetricsProvider::Prometheus(p) = &web.metrics else {
        panic!("{:?}", web.metrics)
    };
    assert_eq!(
        p.url, "http://127.0.0.1:9090",
        "a trailing slash is dropped"
    );
    assert!(
        p.p95_query.contains("http_seconds_bucket"),
        "{}",
        p.p95_query
    );
    assert_eq!(p.error_rate_query, default_error_rate_query());
    assert_eq!(p.request_rate_query, default_request_rate_query());
    assert_eq!(p.timeout, Duration::from_secs(2));
    let api = &cfg.services[&ServiceName::new("api").unwrap()];
    assert_eq!(api.metrics, MetricsProvider::Proxy, "the proxy by default");
}

#[test]
fn metrics_provider_problems_are_listed_at_once() {
    let err = from_toml(
        r#"
        environment = "dev"
        [services.web]
        port = 18080
        [services.web.metrics]
        provider = "prometheus"
        p95_query = " "
        timeout = "never"
        [services.api]
        port = 18081
        [services.api.metrics]
        provider = "graphite"
        [services.db]
        port = 18082
        [services.db.metrics]
        provider = "prometheus"
        url = "prometheus:9090"
        "#,
    )
    .unwrap_err();
    let Error::Config(problems) = err else {
        panic!("{err:?}")
    };
    for expected in [
        "services.web.metrics.url: required with provider = \"prometheus\"",
        "services.web.metrics.p95_query: must not be empty",
        "services.web.metrics.timeout: not a duration",
        "services.api.metrics.provider: \"graphite\" is not a metrics provider",
        "services.db.metrics.url: \"prometheus:9090\" is not an http:// or https:// URL",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "{expected} missing in {problems:#?}"
        );
    }
}

#[test]
fn kubernetes_services_are_read_and_every_problem_is_listed_at_once() {
    let key = ferry_protocol::SigningKey::generate().public_key();
    let head =
        format!("environment = \"dev\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{key}\"]\n");
    let cfg = from_toml(&format!(
        "{head}[services.web]\nruntime = \"kubernetes\"\ncontainer_port = 9000\nlabels = {{ team = \"a\" }}\n[services.web.kubernetes]\nnamespace = \"ferry-dev\"\nservice_type = \"NodePort\"\nimage_pull_secrets = [\"regcred\"]\nlimits = {{ memory = \"128Mi\" }}\n"
    ))
    .expect("a valid kubernetes service");
    let web = &cfg.services[&ServiceName::new("web").unwrap()];
    assert_eq!(web.runtime, RuntimeKind::Kubernetes);
    assert_eq!(web.kubernetes.namespace, "ferry-dev");
    assert_eq!(web.kubernetes.container_port, 9000);
    assert_eq!(web.kubernetes.service_type, "NodePort");
    assert_eq!(web.kubernetes.limits.memory.as_deref(), Some("128Mi"));
    assert_eq!(web.kubernetes.labels["team"], "a");

    let Err(Error::Config(problems)) = from_toml(&format!(
        "{head}[services.web]\nruntime = \"kubernetes\"\nport = 8080\ncommand = [\"x\"]\nlabels = {{ \"ferry.io/version\" = \"x\" }}\n[services.web.kubernetes]\nnamespace = \"Bad_NS\"\nservice_type = \"Ingress\"\nrequests = {{ cpu = \"lots\" }}\nkubeconfig = \"/nonexistent/kubeconfig\"\n[services.web.strategy]\ntype = \"canary\"\n[services.api]\nport = 8081\n[services.api.kubernetes]\nnamespace = \"x\"\n"
    )) else {
        panic!("accepted a broken kubernetes service");
    };
    let joined = problems.join("\n");
    for expected in [
        "services.web: port and listen are not used by runtime \"kubernetes\"",
        "services.web.command: not used by runtime \"kubernetes\"",
        "services.web.labels: \"ferry.io/version\" is reserved",
        "services.web.kubernetes.namespace: \"Bad_NS\"",
        "services.web.kubernetes.service_type: \"Ingress\"",
        "services.web.kubernetes.requests.cpu: \"lots\"",
        "services.web.kubernetes.kubeconfig: /nonexistent/kubeconfig is not a readable file",
        "services.api.kubernetes: only used with runtime = \"kubernetes\"",
        "services.web.strategy: a canary on runtime \"kubernetes\" needs [services.web.metrics] provider = \"prometheus\"",
    ] {
        assert!(
            joined.contains(expected),
            "missing {expected:?} in:\n{joined}"
        );
    }
}

#[test]
fn several_nats_urls_and_a_replica_count_are_read_and_checked() {
    let key = ferry_protocol::SigningKey::generate().public_key();
    let base = format!(
        "environment = \"production\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{key}\"]\n[services.web]\nport = 18080\n"
    );
    let cfg = from_toml(&base).expect("defaults");
    assert_eq!(cfg.stream_replicas.get(), 1);
    let cfg = from_toml(&format!(
        "nats_url = \"nats://n1:4222,nats://n2:4222,nats://n3:4222\"\nstream_replicas = 3\n{base}"
    ))
    .expect("a cluster");
    assert_eq!(cfg.stream_replicas.get(), 3);
    assert_eq!(
        ferry_protocol::streams::server_list(&cfg.nats_url)
            .unwrap()
            .len(),
        3
    );

    let Err(Error::Config(problems)) = from_toml(&format!(
        "nats_url = \"nats://n1:4222,nats://n2:x\"\nstream_replicas = 7\n{base}"
    )) else {
        panic!("accepted a bad URL and 7 replicas");
    };
    let joined = problems.join("\n");
    assert!(joined.contains("nats_url: \"nats://n2:x\""), "{joined}");
    assert!(joined.contains("stream_replicas: 7 is not"), "{joined}");
}

#[test]
fn a_leaf_agent_takes_both_domains_and_every_domain_problem_is_listed() {
    let key = ferry_protocol::SigningKey::generate().public_key();
    let base = format!(
        "environment = \"production\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{key}\"]\n[services.web]\nport = 18080\n"
    );
    assert_eq!(from_toml(&base).expect("defaults").leaf, None);
    let cfg = from_toml(&format!(
        "jetstream_domain = \"production\"\nhub_domain = \"hub\"\n{base}"
    ))
    .expect("a leaf");
    let leaf = cfg.leaf.expect("leaf domains");
    assert_eq!(leaf.leaf.as_str(), "production");
    assert_eq!(leaf.hub.api_prefix(), "$JS.hub.API");

    for (settings, expected) in [
        (
            "hub_domain = \"hub\"\n",
            "hub_domain: set without jetstream_domain",
        ),
        (
            "jetstream_domain = \"production\"\n",
            "jetstream_domain: set without hub_domain",
        ),
        (
            "jetstream_domain = \"x\"\nhub_domain = \"x\"\n",
            "must differ",
        ),
    ] {
        let Err(Error::Config(problems)) = from_toml(&format!("{settings}{base}")) else {
            panic!("accepted {settings}");
        };
        let joined = problems.join("\n");
        assert!(joined.contains(expected), "{expected:?} not in {joined}");
    }
    let Err(Error::Config(problems)) = from_toml(&format!(
        "jetstream_domain = \"prod.eu\"\nhub_domain = \"h*\"\nstream_replicas = 9\n{base}"
    )) else {
        panic!("accepted bad domains");
    };
    let joined = problems.join("\n");
    for expected in [
        "jetstream_domain: \"prod.eu\" is not a JetStream domain",
        "hub_domain: \"h*\" is not a JetStream domain",
        "stream_replicas: 9",
    ] {
        assert!(joined.contains(expected), "{expected:?} not in {joined}");
    }
}

#[test]
fn the_host_is_configured_or_made_from_the_machine_s_hostname_and_a_bad_configured_one_is_listed() {
    let key = ferry_protocol::SigningKey::generate().public_key();
    let base = format!(
        "environment = \"production\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{key}\"]\n[services.web]\nport = 18080\n"
    );
    let cfg = from_toml(&format!("host = \"web-2\"\n{base}")).expect("a valid host");
    assert_eq!(cfg.host.as_str(), "web-2");

    let machine = sysinfo::System::host_name().unwrap_or_default();
    let cfg = from_toml(&base).expect("the machine's hostname always gives a host");
    assert_eq!(
        cfg.host,
        resolve::machine_host_name(&machine).expect("usable")
    );
    for (machine, host) in [
        ("web-3.prod.example.com", "web-3"),
        ("Web_3", "web-3"),
        ("_build_", "build"),
        ("", "localhost"),
        ("...", "localhost"),
    ] {
        assert_eq!(
            resolve::machine_host_name(machine).expect(machine).as_str(),
            host
        );
    }

    let Err(Error::Config(problems)) = from_toml(&format!("host = \"Web_2\"\n{base}")) else {
        panic!("accepted an invalid host name");
    };
    assert!(
        problems.iter().any(|p| p.starts_with("host: ")),
        "{problems:?}"
    );
}

#[test]
fn every_key_that_matches_no_setting_is_refused_with_its_path_and_a_near_miss() {
    let key = ferry_protocol::SigningKey::generate().public_key();
    let text = format!(
        "environment = \"production\"\nstate_dir = \"/tmp/x\"\ntrusted_keys = [\"{key}\"]\n\
         approvals_requird = 2\n\
         [services.web]\nport = 18080\nreplica = 2\n\
         [services.web.heath]\npath = \"/\"\n\
         [services.web.health]\npth = \"/ready\"\n\
         [services.web.analysis]\nerror_rate_percnt = 1.0\n\
         [services.web.strategy]\ntype = \"canary\"\nstep_sec = 10\n\
         [services.web.kubernetes.requests]\ncpus = \"1\"\n"
    );
    let Err(Error::Config(problems)) = from_toml(&text) else {
        panic!("accepted unknown keys");
    };
    for expected in [
        "approvals_requird: unknown setting; did you mean `approvals_required`?",
        "services.web.replica: unknown setting; did you mean `services.web.replicas`?",
        "services.web.heath: unknown setting; did you mean `services.web.health`?",
        "services.web.health.pth: unknown setting; did you mean `services.web.health.path`?",
        "services.web.analysis.error_rate_percnt: unknown setting; did you mean `services.web.analysis.error_rate_percent`?",
        "services.web.strategy.step_sec: unknown setting; did you mean `services.web.strategy.step_secs`?",
        "services.web.kubernetes.requests.cpus: unknown setting; did you mean `services.web.kubernetes.requests.cpu`?",
    ] {
        assert!(problems.iter().any(|p| p == expected), "{expected} not in {problems:#?}");
    }
}
