//! What an operator can do from the dashboard, and who they are: each
//! action is refused unless the request carries a configured operator's
//! token in its `Authorization` header (never a cookie, so another site's
//! page cannot borrow it), then goes to the API handler the CLI's command
//! reaches, with the operator's name as its actor.

use ferry_protocol::api::ApiRequest;
use ferry_protocol::command::{MaintenanceMode, RollbackTarget};
use ferry_protocol::rollout::RolloutControl;
use ferry_protocol::{EnvName, ServiceName};
use serde::Deserialize;

use crate::config::dashboard::ResolvedDashboard;

/// Longest maintenance message accepted.
const MAX_MESSAGE_LEN: usize = 500;
/// Most replicas the dashboard scales to.
const MAX_REPLICAS: u32 = 100;

/// One action as the page sends it.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionRequest {
    pub action: ActionName,
    pub environment: EnvName,
    pub service: ServiceName,
    /// For `scale`.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// For `maintenance_on`: what callers are told.
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ActionName {
    Pause,
    Resume,
    Promote,
    Abort,
    Rollback,
    Scale,
    MaintenanceOn,
    MaintenanceOff,
}

/// Why a request may not act, with the HTTP status to answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: u16,
    pub message: String,
}

/// The operator an `Authorization` header names, or why it names none.
pub(crate) fn authorize<'a>(
    dashboard: &'a ResolvedDashboard,
    authorization: Option<&str>,
) -> Result<&'a str, Refusal> {
    if dashboard.read_only() {
        return Err(Refusal {
            status: 403,
            message: "this dashboard is read-only: no operators are configured \
                      ([[dashboard.operators]] in the controller's configuration)"
                .to_owned(),
        });
    }
    let Some(header) = authorization else {
        return Err(Refusal {
            status: 401,
            message: "refused: this action needs an operator token \
                      (enter yours under \"Operator token\")"
                .to_owned(),
        });
    };
    let token = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .unwrap_or_default();
    dashboard
        .operator(token)
        .map(|o| o.name.as_str())
        .ok_or_else(|| Refusal {
            status: 401,
            message: "refused: the token is not a configured operator's".to_owned(),
        })
}

impl ActionRequest {
    /// The API request the CLI would send for this action, by `operator`.
    pub(crate) fn into_api(self, operator: &str) -> Result<ApiRequest, String> {
        let actor = Some(format!("{operator} (dashboard)"));
        let (environment, service) = (self.environment, self.service);
        let rollout = |control| ApiRequest::Rollout {
            environment: environment.clone(),
            service: service.clone(),
            control,
            actor: actor.clone(),
            hosts: Vec::new(),
        };
        Ok(match self.action {
            ActionName::Pause => rollout(RolloutControl::Pause),
            ActionName::Resume => rollout(RolloutControl::Resume),
            ActionName::Promote => rollout(RolloutControl::Promote),
            ActionName::Abort => rollout(RolloutControl::Abort),
            ActionName::Rollback => ApiRequest::Rollback {
                environment,
                service,
                to: RollbackTarget::Previous,
                force: false,
                dry_run: false,
                actor,
                hosts: Vec::new(),
            },
            ActionName::Scale => match self.replicas {
                Some(replicas) if replicas <= MAX_REPLICAS => ApiRequest::Scale {
                    environment,
                    service,
                    replicas,
                    actor,
                    hosts: Vec::new(),
                },
                _ => return Err(format!("scale needs replicas from 0 to {MAX_REPLICAS}")),
            },
            ActionName::MaintenanceOn => {
                let message = self
                    .message
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "down for maintenance".to_owned());
                if message.len() > MAX_MESSAGE_LEN || message.chars().any(char::is_control) {
                    return Err(format!(
                        "the maintenance message must be at most {MAX_MESSAGE_LEN} bytes on one line"
                    ));
                }
                ApiRequest::Maintenance {
                    environment,
                    service,
                    mode: MaintenanceMode::Enable {
                        message,
                        duration_secs: None,
                    },
                    actor,
                    hosts: Vec::new(),
                }
            }
            ActionName::MaintenanceOff => ApiRequest::Maintenance {
                environment,
                service,
                mode: MaintenanceMode::Disable,
                actor,
                hosts: Vec::new(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dashboard::{hash_token, DashboardConfig, OperatorSettings};

    fn dashboard(operators: &[(&str, &str)]) -> ResolvedDashboard {
        DashboardConfig {
            operators: operators
                .iter()
                .map(|(name, token)| OperatorSettings {
                    name: (*name).into(),
                    token_sha256: hash_token(token),
                })
                .collect(),
        }
        .validate(Some("127.0.0.1:8080"))
        .unwrap()
    }

    #[test]
    fn only_a_configured_bearer_token_may_act() {
        let d = dashboard(&[("alice", "s3cret-token")]);
        assert_eq!(authorize(&d, Some("Bearer s3cret-token")), Ok("alice"));
        assert_eq!(authorize(&d, None).unwrap_err().status, 401);
        assert_eq!(authorize(&d, Some("Bearer wrong")).unwrap_err().status, 401);
        // The token alone, or another scheme, is no bearer token.
        assert_eq!(authorize(&d, Some("s3cret-token")).unwrap_err().status, 401);
        assert_eq!(
            authorize(&d, Some("Basic s3cret-token"))
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(authorize(&d, Some("Bearer ")).unwrap_err().status, 401);
    }

    #[test]
    fn a_read_only_dashboard_refuses_every_action_and_says_why() {
        let d = dashboard(&[]);
        let refusal = authorize(&d, Some("Bearer anything")).unwrap_err();
        assert_eq!(refusal.status, 403);
        assert!(refusal.message.contains("read-only"), "{}", refusal.message);
    }

    #[test]
    fn actions_become_the_clis_requests_with_the_operator_as_actor() {
        let request: ActionRequest =
            serde_json::from_str(r#"{"action":"abort","environment":"dev","service":"web"}"#)
                .unwrap();
        match request.into_api("alice").unwrap() {
            ApiRequest::Rollout { control, actor, .. } => {
                assert_eq!(control, RolloutControl::Abort);
                assert_eq!(actor.as_deref(), Some("alice (dashboard)"));
            }
            other => panic!("{other:?}"),
        }
        let scale: ActionRequest = serde_json::from_str(
            r#"{"action":"scale","environment":"dev","service":"web","replicas":3}"#,
        )
        .unwrap();
        assert!(matches!(
            scale.into_api("bob").unwrap(),
            ApiRequest::Scale { replicas: 3, .. }
        ));
        let unbounded: ActionRequest = serde_json::from_str(
            r#"{"action":"scale","environment":"dev","service":"web","replicas":100000}"#,
        )
        .unwrap();
        assert!(unbounded.into_api("bob").is_err());
        assert!(serde_json::from_str::<ActionRequest>(
            r#"{"action":"delete","environment":"dev","service":"web"}"#
        )
        .is_err());
    }
}
