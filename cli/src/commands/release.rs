//! `ferry release publish`: what CI runs once a release is built and tested.

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::context::PublishErrorKind;
use ferry_protocol::release::Release;
use ferry_protocol::streams;
use ferry_protocol::{subject, Envelope};
use serde_json::json;

use crate::args::{GlobalOpts, OutputFormat, PublishArgs};
use crate::client::Connection;
use crate::error::{CliError, Result};
use crate::output;

/// The `source` of release envelopes.
pub const SOURCE: &str = "/ferry/ci";

/// Builds and checks the release the arguments describe.
fn release(args: &PublishArgs) -> Result<Release> {
    let release = Release {
        service: args.service.clone(),
        version: args.version.clone(),
        artifact: args.artifact.clone(),
        digest: args.digest.clone().filter(|d| !d.is_empty()),
        env: args.env_map().map_err(CliError::usage)?,
        secret_env: args.secret_env.iter().map(|(k, _)| k.clone()).collect(),
        author: args.author.clone().filter(|a| !a.is_empty()),
        commit: args.commit.clone().filter(|c| !c.is_empty()),
        hotfix: args.hotfix,
        scan: args.scan,
    };
    release
        .validate()
        .map_err(|e| CliError::usage(format!("the release is not valid: {e}")))?;
    Ok(release)
}

/// The de-duplication id: publishing the same version twice stores it once.
fn message_id(release: &Release) -> String {
    format!("release/{}/{}", release.service, release.version)
}

/// `ferry release publish`
pub async fn publish(global: &GlobalOpts, args: &PublishArgs) -> Result<()> {
    let release = release(args)?;
    let subject = subject::release(&release.service);
    let body = Envelope::new(SOURCE, release.clone())
        .to_bytes()
        .map_err(|e| CliError::usage(format!("cannot encode the release: {e}")))?;
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, message_id(&release).as_str());

    let connection = Connection::open(global).await?;
    let mut jetstream = async_nats::jetstream::new(connection.client().clone());
    jetstream.set_timeout(connection.timeout());
    let stream = streams::releases().name;
    let publish_error = |e: async_nats::jetstream::context::PublishError| {
        match e.kind() {
        PublishErrorKind::StreamNotFound => CliError::unreachable(format!(
            "the {stream} stream does not exist: start ferry-controller first"
        )),
        PublishErrorKind::TimedOut => CliError::unreachable(format!(
            "JetStream did not acknowledge the release on {subject} within {}: is JetStream enabled and {stream} healthy?",
            humantime::format_duration(connection.timeout())
        )),
        PublishErrorKind::BrokenPipe => {
            CliError::unreachable(format!("lost the NATS connection publishing on {subject}: {e}"))
        }
        _ => CliError::failed(format!("publishing the release on {subject} failed: {e}")),
    }
    };
    let ack = jetstream
        .publish_with_headers(subject.clone(), headers, body.into())
        .await
        .map_err(publish_error)?
        .await
        .map_err(publish_error)?;

    output::emit(&match global.output {
        OutputFormat::Json => output::json(&json!({
            "service": release.service,
            "version": release.version,
            "stream": ack.stream,
            "sequence": ack.sequence,
            "duplicate": ack.duplicate,
        }))?,
        OutputFormat::Table if ack.duplicate => format!(
            "{} {} was already published: {} sequence {} (the earlier message stands)",
            release.service, release.version, ack.stream, ack.sequence
        ),
        OutputFormat::Table => format!(
            "published {} {}: {} sequence {}",
            release.service, release.version, ack.stream, ack.sequence
        ),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Args, Command, ReleaseCommand};

    fn args(extra: &[&str]) -> PublishArgs {
        let base = [
            "ferry",
            "release",
            "publish",
            "--service",
            "web",
            "--version",
            "1.2.3+b7",
        ];
        let Command::Release(ReleaseCommand::Publish(args)) =
            Args::try_parse_from(base.iter().chain(extra))
                .unwrap()
                .command
        else {
            panic!("not a publish")
        };
        args
    }

    #[test]
    fn builds_a_valid_release_with_its_dedup_id() {
        let r = release(&args(&[
            "--artifact",
            "registry.example.com/web:1.2.3",
            "--env",
            "A=1",
            "--commit",
            "abc",
        ]))
        .unwrap();
        assert_eq!(r.env["A"], "1");
        assert_eq!(r.commit.as_deref(), Some("abc"));
        assert_eq!(r.author, None);
        assert!(!r.hotfix);
        assert_eq!(message_id(&r), "release/web/1.2.3+b7");
    }

    #[test]
    fn an_invalid_artifact_is_a_usage_error() {
        let err = release(&args(&["--artifact", "/opt/web --evil"])).unwrap_err();
        assert_eq!(err.exit, crate::error::Exit::Usage);
        assert!(err.to_string().contains("artifact"), "{err}");
    }
}
