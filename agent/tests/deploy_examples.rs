//! The example configurations in deploy/ stay valid as the code changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferry_agent::config::from_toml;

#[test]
fn the_deploy_examples_for_every_environment_are_valid_agent_configurations() {
    for (env, text) in [
        ("dev", include_str!("../../deploy/agent-dev.toml")),
        (
            "acceptance",
            include_str!("../../deploy/agent-acceptance.toml"),
        ),
        (
            "production",
            include_str!("../../deploy/agent-production.toml"),
        ),
    ] {
        let config = from_toml(text).unwrap_or_else(|e| panic!("deploy/agent-{env}.toml: {e}"));
        assert_eq!(config.environment.as_str(), env);
        assert_eq!(config.services.len(), 1);
    }
}
