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

#[test]
fn the_deploy_example_of_an_agent_on_a_leaf_node_names_both_domains() {
    let text = include_str!("../../deploy/agent-production-leaf.toml");
    let config =
        from_toml(text).unwrap_or_else(|e| panic!("deploy/agent-production-leaf.toml: {e}"));
    assert_eq!(config.environment.as_str(), "production");
    let leaf = config.leaf.expect("leaf domains");
    assert_eq!(leaf.leaf.as_str(), "production");
    assert_eq!(leaf.hub.as_str(), "hub");
    assert_eq!(config.stream_replicas.get(), 1);
}
