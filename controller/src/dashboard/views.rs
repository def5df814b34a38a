//! The dashboard's read views, answered by the API's own handlers (the same
//! state and rules `ferry status`, `ferry history` and `ferry approvals`
//! read) and kept as the last good copy: while the controller's NATS
//! connection is down a page gets that copy, marked stale, instead of an
//! error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::api::{ApiReply, ApiRequest, HistoryRecord, PromotionView, StatusRow};
use ferry_protocol::{EnvName, Envelope, ServiceName};
use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::live::Live;
use crate::{api, Shared};

/// How long one read may take before the last good copy is served.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Views kept for stale answers (distinct filters of the audit trail add up).
const CACHED_VIEWS: usize = 256;
/// Deployments shown on a service page.
const SERVICE_HISTORY: u32 = 50;
/// Most audit records one page asks for.
pub(crate) const MAX_AUDIT: u32 = 500;

/// What a view answers: its data, and since when it is stale, if it is.
#[derive(Serialize)]
pub(crate) struct Answer {
    #[serde(with = "time::serde::rfc3339::option")]
    stale_since: Option<OffsetDateTime>,
    read_only: bool,
    data: Value,
}

/// The audit trail's filters, as `ferry history` takes them.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct AuditFilter {
    pub environment: Option<EnvName>,
    pub service: Option<ServiceName>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub limit: u32,
}

pub(crate) struct Views {
    shared: Arc<Shared>,
    live: Arc<Live>,
    last_good: Mutex<HashMap<String, (OffsetDateTime, Value)>>,
}

impl Views {
    pub(crate) fn new(shared: Arc<Shared>, live: Arc<Live>) -> Views {
        Views {
            shared,
            live,
            last_good: Mutex::new(HashMap::new()),
        }
    }

    /// Asks the API handlers, as a client on NATS would.
    pub(crate) async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        request: ApiRequest,
    ) -> Result<(String, Option<T>), String> {
        let bytes = api::answer(&self.shared, Uuid::new_v4(), request).await?;
        let reply = Envelope::<ApiReply<T>>::decode(&bytes)
            .map_err(|r| format!("the controller's reply did not read: {}", r.detail))?
            .data;
        if reply.success {
            Ok((reply.message, reply.response))
        } else {
            Err(reply.message)
        }
    }

    async fn data<T: serde::de::DeserializeOwned + Default>(
        &self,
        request: ApiRequest,
    ) -> Result<T, String> {
        Ok(self.ask(request).await?.1.unwrap_or_default())
    }

    /// Answers `key` with `read`, or with its last good copy, marked stale,
    /// when NATS is down or the read fails.
    pub(crate) async fn serve<F>(&self, key: String, read: F) -> Result<Answer, String>
    where
        F: std::future::Future<Output = Result<Value, String>>,
    {
        let read_only = self.shared.config.dashboard().read_only();
        let connection = self.live.connection();
        let failure = if connection.connected {
            match tokio::time::timeout(READ_DEADLINE, read).await {
                Ok(Ok(data)) => {
                    let mut cache = self
                        .last_good
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if cache.len() >= CACHED_VIEWS && !cache.contains_key(&key) {
                        cache.clear();
                    }
                    cache.insert(key, (OffsetDateTime::now_utc(), data.clone()));
                    return Ok(Answer {
                        stale_since: None,
                        read_only,
                        data,
                    });
                }
                Ok(Err(e)) => e,
                Err(_) => format!("the controller did not answer within {READ_DEADLINE:?}"),
            }
        } else {
            "the controller's NATS connection is down".to_owned()
        };
        let cached = self
            .last_good
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        match cached {
            Some((at, data)) => Ok(Answer {
                stale_since: Some(connection.stale_since.unwrap_or(at)),
                read_only,
                data,
            }),
            None => Err(failure),
        }
    }

    /// The environments × services grid.
    pub(crate) async fn overview(&self) -> Result<Value, String> {
        let rows: Vec<StatusRow> = self.data(ApiRequest::Status { environment: None }).await?;
        Ok(json!({
            "pipeline": self.shared.config.environments(),
            "rows": rows,
            "alerts": self.live.alerts(),
            "operators": self.shared.config.dashboard().operators.len(),
        }))
    }

    /// One service: where it runs, its rollouts in progress, its deployments.
    pub(crate) async fn service(&self, service: ServiceName) -> Result<Value, String> {
        let rows: Vec<StatusRow> = self.data(ApiRequest::Status { environment: None }).await?;
        let rows: Vec<StatusRow> = rows
            .into_iter()
            .filter(|r| r.service.as_ref() == Some(&service))
            .collect();
        let history: Vec<HistoryRecord> = self
            .data(ApiRequest::History {
                environment: None,
                service: Some(service.clone()),
                limit: SERVICE_HISTORY,
                actor: None,
                since: None,
                action: None,
            })
            .await?;
        let timelines: HashMap<&EnvName, _> = self
            .shared
            .config
            .environments()
            .iter()
            .map(|env| (env, self.live.timeline(env, &service)))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        Ok(json!({
            "service": service,
            "pipeline": self.shared.config.environments(),
            "rows": rows,
            "timelines": timelines,
            "history": history,
            "alerts": self.live.alerts().into_iter().filter(|a| a.service == service).collect::<Vec<_>>(),
        }))
    }

    /// Promotions waiting, who may approve each, and the command to run.
    pub(crate) async fn approvals(&self) -> Result<Value, String> {
        let rows: Vec<PromotionView> = self
            .data(ApiRequest::Approvals {
                environment: None,
                service: None,
                all: false,
            })
            .await?;
        let rows: Vec<Value> = rows
            .into_iter()
            .map(|view| {
                let reviewers: Vec<&str> = self
                    .shared
                    .config
                    .stage(&view.environment)
                    .map(|s| s.reviewers.iter().map(|r| r.name.as_str()).collect())
                    .unwrap_or_default();
                let (kind, command) = next_command(&view);
                json!({ "promotion": view, "reviewers": reviewers, "command": command, "kind": kind })
            })
            .collect();
        Ok(json!({ "promotions": rows }))
    }

    /// The audit trail, filtered as `ferry history` filters it.
    pub(crate) async fn audit(&self, filter: AuditFilter) -> Result<Value, String> {
        let records: Vec<HistoryRecord> = self
            .data(ApiRequest::History {
                environment: filter.environment,
                service: filter.service,
                limit: filter.limit.clamp(1, MAX_AUDIT),
                actor: filter.actor,
                since: filter.since,
                action: filter.action,
            })
            .await?;
        Ok(json!({ "records": records, "pipeline": self.shared.config.environments() }))
    }
}

/// What moves a waiting promotion on, as a command to copy: the
/// `ferry approve` a reviewer runs with their own key (from
/// FERRY_REVIEWER_KEY, or `--key FILE`; the key stays on their machine, so
/// the page can only hand them the command), or, where no approval is
/// missing, the `ferry promote` it waits for.
pub(crate) fn next_command(view: &PromotionView) -> (&'static str, String) {
    let target = format!("{} {} -e {}", view.service, view.version, view.environment);
    if view.approvals_valid < view.approvals_required {
        ("approve", format!("ferry approve {target}"))
    } else if view.overrides_valid < view.overrides_required {
        (
            "approve",
            format!("ferry approve {target} --security-override"),
        )
    } else {
        ("promote", format!("ferry promote {target}"))
    }
}
