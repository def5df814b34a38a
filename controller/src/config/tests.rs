//! Tests of loading and validating the controller configuration.

use super::*;

fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("controller.nk");
    std::fs::write(&path, SigningKey::generate().seed().unwrap()).unwrap();
    path
}

#[test]
fn defaults_with_a_key_file_validate() {
    let dir = tempfile::tempdir().unwrap();
    let config = ControllerConfig {
        signing_key_file: key_file(dir.path()),
        ..ControllerConfig::default()
    };
    let resolved = config.validate().unwrap();
    assert_eq!(resolved.pipeline(), "dev, acceptance, production");
    assert_eq!(resolved.first_environment().as_str(), "dev");
    assert_eq!(resolved.command_ttl(), Duration::from_secs(3600));
    assert_eq!(resolved.agent_timeout(), Duration::from_secs(15));
}

#[test]
fn a_nats_user_needs_its_password_file_and_the_inbox_prefix_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = ControllerConfig {
        signing_key_file: key_file(dir.path()),
        nats_user: Some("ferry-controller".into()),
        nats_inbox_prefix: "_INBOX.*".into(),
        ..ControllerConfig::default()
    };
    let problems = config.validate().unwrap_err();
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["nats_user", "nats_inbox_prefix"], "{problems:?}");

    let password = dir.path().join("controller.password");
    std::fs::write(&password, "s3cret-value\n").unwrap();
    let resolved = ControllerConfig {
        signing_key_file: key_file(dir.path()),
        nats_user: Some("ferry-controller".into()),
        nats_password_file: Some(password.clone()),
        ..ControllerConfig::default()
    }
    .validate()
    .unwrap();
    assert_eq!(
        resolved.nats_user(),
        Some(("ferry-controller", password.as_path()))
    );
    assert_eq!(resolved.nats_inbox_prefix(), DEFAULT_INBOX_PREFIX);
    assert!(!format!("{resolved:?}").contains("s3cret-value"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = ControllerConfig {
        nats_url: " ".into(),
        nats_creds: Some(dir.path().join("missing.creds")),
        signing_key_file: dir.path().join("missing.nk"),
        environments: vec!["dev".into(), "Prod".into(), "dev".into()],
        command_ttl: "forever".into(),
        agent_timeout: "0s".into(),
        ..ControllerConfig::default()
    };
    let problems = config.validate().unwrap_err();
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "nats_url",
            "nats_creds",
            "signing_key_file",
            "environments",
            "environments",
            "command_ttl",
            "agent_timeout"
        ],
        "{problems:?}"
    );
    assert!(problems[4].message.contains("dev is listed twice"));
}

#[test]
fn dashboard_problems_are_listed_with_every_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ControllerConfig {
        agent_timeout: "0s".into(),
        signing_key_file: key_file(dir.path()),
        dashboard_listen: Some("localhost:80".into()),
        ..ControllerConfig::default()
    };
    config.dashboard.operators = vec![crate::dashboard::OperatorSettings {
        name: "alice".into(),
        token_sha256: "abc".into(),
    }];
    let problems = config.validate().unwrap_err();
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["agent_timeout", "dashboard_listen", "dashboard.operators"],
        "{problems:?}"
    );
    config.agent_timeout = "15s".into();
    config.dashboard_listen = Some("127.0.0.1:8080".into());
    config.dashboard.operators[0].token_sha256 = crate::dashboard::hash_token("t");
    let resolved = config.validate().unwrap();
    assert_eq!(resolved.dashboard().operator("t").unwrap().name, "alice");
}

#[test]
fn empty_pipeline_missing_key_and_bad_seed_are_problems() {
    let config = ControllerConfig {
        environments: vec![],
        ..ControllerConfig::default()
    };
    let problems = config.validate().unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].message.contains(ENV_SIGNING_KEY_FILE));
    assert!(problems[1].message.contains("empty"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.nk");
    std::fs::write(&bad, "not a seed").unwrap();
    let config = ControllerConfig {
        signing_key_file: bad,
        ..ControllerConfig::default()
    };
    let problems = config.validate().unwrap_err();
    assert!(problems[0].message.contains("nkey seed"), "{problems:?}");
}

#[test]
fn a_ttl_longer_than_the_commands_stream_keeps_them_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = ControllerConfig {
        signing_key_file: key_file(dir.path()),
        command_ttl: "30days".into(),
        ..ControllerConfig::default()
    };
    let problems = config.validate().unwrap_err();
    assert_eq!(problems[0].field, "command_ttl");
}

#[test]
fn file_then_environment_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("controller.toml");
    std::fs::write(
        &file,
        "nats_url = \"nats://nats:4222\"\nenvironments = [\"a\", \"b\"]\ncommand_ttl = \"10m\"\n",
    )
    .unwrap();
    let env = config::Map::from([
        (ENV_ENVIRONMENTS.to_owned(), "dev,staging,prod".to_owned()),
        (
            ENV_SIGNING_KEY_FILE.to_owned(),
            "/etc/ferry/key.nk".to_owned(),
        ),
        (ENV_AGENT_TIMEOUT.to_owned(), "30s".to_owned()),
        ("FERRY_LOG_FORMAT".to_owned(), "json".to_owned()),
    ]);
    let config = ControllerConfig::load(Some(&file), Some(env)).unwrap();
    assert_eq!(config.nats_url, "nats://nats:4222");
    assert_eq!(config.environments, ["dev", "staging", "prod"]);
    assert_eq!(config.signing_key_file, PathBuf::from("/etc/ferry/key.nk"));
    assert_eq!(config.command_ttl, "10m");
    assert_eq!(config.agent_timeout, "30s");
    assert_eq!(config.nats_creds, None);
}

#[test]
fn a_single_environment_from_the_environment_is_a_list() {
    let env = config::Map::from([(ENV_ENVIRONMENTS.to_owned(), "dev".to_owned())]);
    let config = ControllerConfig::load(None, Some(env)).unwrap();
    assert_eq!(config.environments, ["dev"]);
}

#[test]
fn the_deploy_example_is_a_valid_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/controller.toml");
    let env = config::Map::from([(
        ENV_SIGNING_KEY_FILE.to_owned(),
        key_file(dir.path()).display().to_string(),
    )]);
    let resolved = ControllerConfig::load(Some(&file), Some(env))
        .unwrap()
        .validate()
        .unwrap_or_else(|p| panic!("{p:?}"));
    let production = resolved
        .stage(&EnvName::new("production").unwrap())
        .unwrap();
    assert_eq!(production.approvals_required, 2);
    assert_eq!(production.reviewers.len(), 3);
    assert_eq!(production.soak, Duration::from_secs(3600));
    assert!(
        resolved
            .stage(&EnvName::new("dev").unwrap())
            .unwrap()
            .auto_deploy
    );
    assert_eq!(resolved.approval_ttl(), Duration::from_secs(72 * 3600));
}

#[test]
fn a_stage_strategy_is_a_known_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ControllerConfig {
        signing_key_file: key_file(dir.path()),
        ..ControllerConfig::default()
    };
    config.pipeline.insert(
        "production".into(),
        StageSettings {
            strategy: Some("canary".into()),
            ..Default::default()
        },
    );
    let resolved = config.clone().validate().unwrap();
    assert_eq!(
        resolved
            .stage(&EnvName::new("production").unwrap())
            .unwrap()
            .strategy,
        Some(ferry_protocol::rollout::StrategyKind::Canary)
    );
    config.pipeline.insert(
        "acceptance".into(),
        StageSettings {
            strategy: Some("sideways".into()),
            ..Default::default()
        },
    );
    let problems = config.validate().unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "pipeline.strategy");
}

#[test]
fn approvals_beyond_the_reviewers_and_unknown_stages_are_problems() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ControllerConfig {
        signing_key_file: key_file(dir.path()),
        ..ControllerConfig::default()
    };
    config.pipeline.insert(
        "production".into(),
        StageSettings {
            approvals_required: 2,
            reviewers: vec![ReviewerSettings {
                name: "alice".into(),
                key: SigningKey::generate().public_key(),
            }],
            ..Default::default()
        },
    );
    config
        .pipeline
        .insert("staging".into(), StageSettings::default());
    let problems = config.validate().unwrap_err();
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["pipeline", "pipeline.approvals_required"],
        "{problems:?}"
    );
}

#[test]
fn the_example_file_serves_metrics_and_alerts_on_the_seeds_thresholds() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/controller.toml");
    let config = ControllerConfig::load(Some(&file), Some(config::Map::new())).unwrap();
    assert_eq!(config.metrics_listen.as_deref(), Some("127.0.0.1:9464"));
    assert_eq!(config.dashboard_listen.as_deref(), Some("127.0.0.1:9080"));
    assert_eq!(config.alert_error_rate_percent, 5.0);
    assert_eq!(config.alert_availability_percent, 95.0);
    let dir = tempfile::tempdir().unwrap();
    let resolved = ControllerConfig {
        signing_key_file: key_file(dir.path()),
        ..config
    }
    .validate()
    .unwrap();
    assert_eq!(
        resolved.metrics_listen(),
        Some("127.0.0.1:9464".parse().unwrap())
    );
    // Loopback and read-only until operators are added.
    assert!(resolved.dashboard().listen.unwrap().ip().is_loopback());
    assert!(resolved.dashboard().read_only());
}

#[test]
fn bad_toml_is_a_load_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("controller.toml");
    std::fs::write(&file, "environments = 3").unwrap();
    let err = ControllerConfig::load(Some(&file), Some(config::Map::new())).unwrap_err();
    assert!(matches!(err, Error::LoadConfig(_)), "{err}");
}

#[test]
fn several_nats_urls_and_a_replica_count_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let resolved = ControllerConfig {
        signing_key_file: key_file(dir.path()),
        nats_url: "nats://n1:4222, nats://n2:4222,nats://n3:4222".into(),
        stream_replicas: 3,
        ..ControllerConfig::default()
    }
    .validate()
    .unwrap();
    assert_eq!(resolved.stream_replicas().get(), 3);
    assert_eq!(streams::server_list(resolved.nats_url()).unwrap().len(), 3);

    let problems = ControllerConfig {
        signing_key_file: key_file(dir.path()),
        nats_url: "nats://n1:4222,nats://n2:x".into(),
        stream_replicas: 0,
        ..ControllerConfig::default()
    }
    .validate()
    .unwrap_err();
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["nats_url", "stream_replicas"], "{problems:?}");
}

#[test]
fn leaf_domains_name_pipeline_environments_need_the_hub_domain_and_every_problem_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let resolved = ControllerConfig {
        signing_key_file: key_file(dir.path()),
        jetstream_domain: Some("hub".into()),
        leaf_domains: BTreeMap::from([("production".into(), "production".into())]),
        ..ControllerConfig::default()
    }
    .validate()
    .unwrap();
    assert_eq!(resolved.jetstream_domain().unwrap().as_str(), "hub");
    let leaves = resolved.leaf_domains();
    assert_eq!(leaves.len(), 1);
    assert_eq!(leaves[0].0.as_str(), "production");
    assert_eq!(leaves[0].1.api_prefix(), "$JS.production.API");

    // Without a hub domain, with a bad name, an unknown environment and a
    // domain used twice: all reported at once.
    let problems = ControllerConfig {
        signing_key_file: key_file(dir.path()),
        leaf_domains: BTreeMap::from([
            ("production".into(), "p.1".into()),
            ("staging".into(), "staging".into()),
            ("acceptance".into(), "dev".into()),
            ("dev".into(), "dev".into()),
        ]),
        ..ControllerConfig::default()
    }
    .validate()
    .unwrap_err();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let text = text.join("\n");
    for expected in [
        "leaf_domains: set jetstream_domain too",
        "leaf_domains: \"p.1\" is not a JetStream domain",
        "leaf_domains: staging is not an environment of the pipeline",
        "leaf_domains: dev is the domain of the hub or of another leaf",
    ] {
        assert!(text.contains(expected), "{expected:?} not in {text}");
    }
    let problems = ControllerConfig {
        signing_key_file: key_file(dir.path()),
        jetstream_domain: Some("hub central".into()),
        ..ControllerConfig::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(problems[0].field, "jetstream_domain", "{problems:?}");
}

#[test]
fn every_key_and_variable_that_matches_no_setting_is_listed_with_the_other_problems() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("controller.toml");
    std::fs::write(
        &file,
        format!(
            "signing_key_file = {:?}\ncomand_ttl = \"1h\"\nagent_timeout = \"never\"\n\
             [pipeline.production]\napprovals_requird = 2\n\
             [notify.slack]\nwebhook_urll = \"https://example.com\"\n\
             [[dashboard.operators]]\nname = \"a\"\ntoken_sha256 = \"x\"\nrole = \"x\"\n",
            key_file(dir.path())
        ),
    )
    .unwrap();
    let env = config::Map::from([("FERRY_NATS_ULR".to_owned(), "nats://x:4222".to_owned())]);
    let Err(Error::InvalidConfig(problems)) = ControllerConfig::load(Some(&file), Some(env)) else {
        panic!("accepted unknown keys");
    };
    let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
    for expected in [
        "comand_ttl: unknown setting; did you mean `command_ttl`?",
        "pipeline.production.approvals_requird: unknown setting; did you mean `pipeline.production.approvals_required`?",
        "dashboard.operators.0.role: unknown setting",
        "FERRY_NATS_ULR: matches no setting (it would set `nats_ulr`); did you mean `FERRY_NATS_URL`?",
    ] {
        assert!(listed.iter().any(|p| p == expected), "{expected} not in {listed:#?}");
    }
    assert!(
        listed
            .iter()
            .any(|p| p.starts_with("notify.slack.webhook_urll: unknown setting; did you mean")),
        "{listed:#?}"
    );
    assert!(
        listed.iter().any(|p| p.starts_with("agent_timeout:")),
        "the other problems are listed too: {listed:#?}"
    );
}
