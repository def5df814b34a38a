//! How the sinks send: one HTTPS-capable client, a JSON POST under a
//! deadline, and the failure every sink reports (whether a retry may help).

use std::time::Duration;

use crate::Error;

/// Longest an HTTP endpoint or SMTP server may take.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// A delivery failure: whether trying again may help.
#[derive(Debug)]
pub(crate) struct SendError {
    /// Whether trying again may help.
    pub(crate) retry: bool,
    /// What went wrong.
    pub(crate) message: String,
}

impl SendError {
    pub(crate) fn transient(message: impl Into<String>) -> Self {
        SendError {
            retry: true,
            message: message.into(),
        }
    }
    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        SendError {
            retry: false,
            message: message.into(),
        }
    }
}

/// An HTTPS-capable client (ring, the system's roots), shared by the HTTP sinks.
pub(crate) type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

pub(crate) fn http_client() -> Result<HttpClient, Error> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| Error::Notify(format!("cannot set up TLS: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// POSTs `body` as JSON to `url` with extra `headers`; 2xx is success, 429
/// and 5xx may pass, other statuses will not.
pub(crate) async fn post_json(
    client: &HttpClient,
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> Result<(), SendError> {
    let mut request = hyper::Request::post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .map_err(|e| SendError::permanent(format!("cannot build the request: {e}")))?;
    let response = tokio::time::timeout(SEND_TIMEOUT, client.request(request))
        .await
        .map_err(|_| SendError::transient(format!("no answer within {SEND_TIMEOUT:?}")))?
        .map_err(|e| SendError::transient(format!("request failed: {e}")))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else if status.as_u16() == 429 || status.is_server_error() {
        Err(SendError::transient(format!("answered {status}")))
    } else {
        Err(SendError::permanent(format!("answered {status}")))
    }
}
