//! Connecting to NATS and calling the controller's request-reply API.

use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, RequestErrorKind};
use ferry_protocol::api::{ApiReply, ApiRequest};
use ferry_protocol::{subject, Envelope};
use serde::de::DeserializeOwned;

use crate::args::GlobalOpts;
use crate::error::{CliError, Exit, Result};

/// The `source` of every envelope the CLI sends to the controller.
pub const SOURCE: &str = "/ferry/cli";

/// Who is asking: `$FERRY_ACTOR`, else `$USER`, else `unknown`.
pub fn actor() -> String {
    ["FERRY_ACTOR", "USER"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|value| value.trim().to_owned())
        .find(|value| !value.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A NATS connection with the timeout every request uses.
pub struct Connection {
    client: Client,
    timeout: Duration,
}

/// Errors the server sent on a connection, oldest first.
#[derive(Clone, Debug, Default)]
pub struct ServerErrors(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl ServerErrors {
    fn push(&self, error: String) {
        if let Ok(mut errors) = self.0.lock() {
            errors.push(error);
        }
    }

    /// The errors so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// A successful API reply: the controller's sentence and the typed response.
#[derive(Debug)]
pub struct Reply<T> {
    /// A sentence for people.
    pub message: String,
    /// What was asked for.
    pub response: T,
}

impl Connection {
    /// Connects as the global options say.
    pub async fn open(global: &GlobalOpts) -> Result<Self> {
        Self::open_with(global, ConnectOptions::new()).await
    }

    /// Connects as [`Connection::open`] does, and keeps every error the
    /// server reports (permission violations among them) for the caller.
    pub async fn open_recording_errors(global: &GlobalOpts) -> Result<(Self, ServerErrors)> {
        let errors = ServerErrors::default();
        let sink = errors.clone();
        let options = ConnectOptions::new().event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    sink.push(error.to_string());
                }
            }
        });
        Ok((Self::open_with(global, options).await?, errors))
    }

    async fn open_with(global: &GlobalOpts, base: ConnectOptions) -> Result<Self> {
        let options = match &global.creds {
            Some(path) => base.credentials_file(path).await.map_err(|e| {
                CliError::usage(format!(
                    "cannot read the NATS credentials file {}: {e}",
                    path.display()
                ))
            })?,
            None => base,
        };
        let options = match (&global.nats_user, &global.nats_password_file) {
            (Some(user), Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    CliError::usage(format!(
                        "cannot read the NATS password file {}: {e}",
                        file.display()
                    ))
                })?;
                let password = text.lines().next().unwrap_or("").to_owned();
                options.user_and_password(user.clone(), password)
            }
            _ => options,
        }
        .name("ferry-cli")
        .custom_inbox_prefix(&global.nats_inbox_prefix)
        .connection_timeout(global.timeout)
        .request_timeout(Some(global.timeout));

        let tls = ferry_protocol::nats_tls::TlsFiles {
            ca_file: global.nats_tls_ca_file.clone(),
            cert_file: global.nats_tls_cert_file.clone(),
            key_file: global.nats_tls_key_file.clone(),
        };
        let unreadable: Vec<String> = tls
            .problems(|path| std::fs::File::open(path).err().map(|e| e.to_string()))
            .into_iter()
            .map(|(key, why)| format!("--{}: {why}", key.replace('_', "-")))
            .collect();
        if !unreadable.is_empty() {
            return Err(CliError::usage(unreadable.join("; ")));
        }
        let options = tls.apply(options);

        let urls: Vec<&str> = global
            .nats_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let client = options.connect(urls.as_slice()).await.map_err(|e| {
            let url = &global.nats_url;
            match e.kind() {
                ConnectErrorKind::ServerParse => {
                    CliError::usage(format!("--nats-url {url:?} is not a NATS URL: {e}"))
                }
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    CliError::unreachable(format!(
                        "NATS at {url} refused the connection ({e}): check --creds or --nats-user/--nats-password-file"
                    ))
                }
                ConnectErrorKind::Tls => CliError::unreachable(format!(
                    "TLS with NATS at {url} failed ({e}): check --nats-tls-ca-file (the CA of the server's certificate) and --nats-tls-cert-file/--nats-tls-key-file (a client certificate the server trusts)"
                )),
                _ if tls.is_set() => CliError::unreachable(format!(
                    "cannot connect to NATS at {url} over TLS: {e} (a server that verifies clients needs a client certificate signed by a CA it trusts: check --nats-tls-cert-file/--nats-tls-key-file)"
                )),
                _ if e.to_string().contains("certificate") => CliError::unreachable(format!(
                    "NATS at {url} requires TLS and its certificate is not trusted ({e}): set --nats-tls-ca-file to the CA that signed it (and --nats-tls-cert-file/--nats-tls-key-file if it verifies clients)"
                )),
                _ => CliError::unreachable(format!(
                    "cannot connect to NATS at {url}: {e} (is nats-server running? set --nats-url or FERRY_NATS_URL; a server requiring TLS needs --nats-tls-ca-file)"
                )),
            }
        })?;
        Ok(Connection {
            client,
            timeout: global.timeout,
        })
    }

    /// The NATS client, for subscriptions and JetStream.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `request` to the controller and decodes its reply as `T`.
    pub async fn call<T: DeserializeOwned>(&self, request: ApiRequest) -> Result<Reply<T>> {
        let subject = subject::api(request.op());
        let body = Envelope::new(SOURCE, request)
            .to_bytes()
            .map_err(|e| CliError::usage(format!("cannot encode the request: {e}")))?;
        let message = self
            .client
            .request(subject.clone(), body.into())
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => CliError::unreachable(format!(
                    "nothing answers on {subject}: is ferry-controller running?"
                )),
                RequestErrorKind::TimedOut => CliError::unreachable(format!(
                    "no reply on {subject} within {}: is ferry-controller running?",
                    humantime::format_duration(self.timeout)
                )),
                RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                    CliError::failed(format!("cannot send the request on {subject}: {e}"))
                }
                RequestErrorKind::Other => CliError::unreachable(format!(
                    "request on {subject} failed: {e}: is ferry-controller running?"
                )),
            })?;
        decode_reply(&message.payload)
    }
}

/// Decodes a reply envelope: a failed reply is exit 1 with the controller's message.
pub fn decode_reply<T: DeserializeOwned>(raw: &[u8]) -> Result<Reply<T>> {
    let envelope = Envelope::<ApiReply<T>>::decode(raw).map_err(|e| {
        CliError::new(
            Exit::Failed,
            anyhow::anyhow!("cannot read the controller's reply: {e}"),
        )
    })?;
    let reply = envelope.data;
    if !reply.success {
        return Err(CliError::failed(format!(
            "the controller refused the request: {}",
            reply.message
        )));
    }
    match reply.response {
        Some(response) => Ok(Reply {
            message: reply.message,
            response,
        }),
        None => Err(CliError::failed(format!(
            "the controller's reply carries no response: {}",
            reply.message
        ))),
    }
}

#[cfg(test)]
mod tests {
    use ferry_protocol::api::StatusRow;

    use super::*;

    #[test]
    fn replies_decode_and_failures_exit_one() {
        let ok = Envelope::new(
            "/ferry/controller",
            ApiReply::ok("2 rows", Vec::<StatusRow>::new()),
        )
        .to_bytes()
        .unwrap();
        let reply: Reply<Vec<StatusRow>> = decode_reply(&ok).unwrap();
        assert_eq!(reply.message, "2 rows");

        let refused = Envelope::new(
            "/ferry/controller",
            ApiReply::<Vec<StatusRow>>::error("unknown release web 9.9"),
        )
        .to_bytes()
        .unwrap();
        let err = decode_reply::<Vec<StatusRow>>(&refused).unwrap_err();
        assert_eq!(err.exit, Exit::Failed);
        assert!(err.to_string().contains("unknown release web 9.9"), "{err}");

        let err = decode_reply::<Vec<StatusRow>>(b"not json").unwrap_err();
        assert_eq!(err.exit, Exit::Failed);
    }
}
