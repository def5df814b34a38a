//! Email over SMTP with lettre: STARTTLS (port 587) for real servers,
//! plain SMTP only when `starttls = false` (a relay on loopback).

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::notice::Notice;
use super::transport::{SendError, SEND_TIMEOUT};
use crate::config::notify::ResolvedNotify;

/// The plain-text body.
pub fn text(notice: &Notice) -> String {
    format!(
        "{}\n\n{}\n\nEnvironment: {}\nService:     {}\nVersion:     {}\nBy:          {}\nEvent:       {}\nTime:        {}\n",
        notice.headline(),
        notice.detail,
        notice.env(),
        notice.service,
        notice.version.as_ref().map_or("-", |v| v.as_str()),
        notice.actor.as_deref().unwrap_or("-"),
        notice.kind,
        notice
            .time
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    )
}

pub(super) async fn send(settings: &ResolvedNotify, notice: &Notice) -> Result<(), SendError> {
    let Some(email) = &settings.email else {
        return Ok(());
    };
    let mut builder = Message::builder()
        .from(email.from.clone())
        .subject(format!("[ferry] {}", notice.headline()))
        .header(ContentType::TEXT_PLAIN);
    for to in &email.to {
        builder = builder.to(to.clone());
    }
    let message = builder
        .body(text(notice))
        .map_err(|e| SendError::permanent(format!("cannot build the email: {e}")))?;
    let mut transport = if email.starttls {
        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&email.host)
            .map_err(|e| SendError::permanent(format!("cannot set up STARTTLS: {e}")))?
    } else {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&email.host)
    }
    .port(email.port)
    .timeout(Some(SEND_TIMEOUT));
    if let Some((user, password)) = &email.credentials {
        transport = transport.credentials(Credentials::new(user.clone(), password.clone()));
    }
    let transport = transport.build();
    match transport.send(message).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_permanent() => Err(SendError::permanent(format!("SMTP refused: {e}"))),
        Err(e) => Err(SendError::transient(format!("SMTP failed: {e}"))),
    }
}
