//! Value parsers shared by the argument types.

use ferry_protocol::command::MAX_MESSAGE_LEN;
use ferry_protocol::release::ScanSummary;
use time::OffsetDateTime;

pub(super) fn parse_scan(text: &str) -> Result<ScanSummary, String> {
    ScanSummary::parse(text).map_err(|e| e.to_string())
}

pub(super) fn parse_since(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is neither a duration (24h) nor an RFC 3339 time"))?;
    Ok(OffsetDateTime::now_utc() - ago)
}

pub(super) fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    let valid = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "{key:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

pub(super) fn parse_message(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("the message must not be empty".to_owned());
    }
    if text.len() > MAX_MESSAGE_LEN {
        return Err(format!("at most {MAX_MESSAGE_LEN} bytes"));
    }
    Ok(text.to_owned())
}
