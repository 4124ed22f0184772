//! Connecting to the key service and turning failures into one-line messages.

use std::error::Error as _;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tollgate_proto::v1::key_service_client::KeyServiceClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Where the quickstart key service writes its admin token, relative to the project root.
pub const DEFAULT_TOKEN_FILE: &str = ".run/keyd/admin.token";

/// The key-service client the commands use.
pub type Client = KeyServiceClient<InterceptedService<Channel, Auth>>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Auth {
    header: Option<AsciiMetadataValue>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.header.is_some() { "Bearer <redacted>" } else { "none" };
        f.debug_struct("Auth").field("header", &shown).finish()
    }
}

impl Auth {
    pub fn new(token: Option<&str>) -> Result<Auth, CliError> {
        let header = match token {
            None => None,
            Some(token) => Some(
                MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| CliError::Usage("the admin token contains invalid characters".into()))?,
            ),
        };
        Ok(Auth { header })
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            req.metadata_mut().insert("authorization", header.clone());
        }
        Ok(req)
    }
}

/// Picks the admin token: `--token` wins; else the token file. A missing default token file is
/// not an error (the call then goes out without a token); a missing explicit one is.
pub fn resolve_token(token: Option<String>, token_file: Option<&Path>) -> Result<Option<String>, CliError> {
    if let Some(token) = token {
        return Ok(Some(token.trim().to_owned()));
    }
    let (path, explicit) = match token_file {
        Some(path) => (path.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_TOKEN_FILE), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(err) if !explicit && err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => {
            Err(CliError::Other(format!("cannot read the admin token from {}: {err}", path.display())))
        }
    }
}

/// Connects to the key service at `server`.
pub async fn connect(server: &str, token: Option<&str>, timeout: Duration) -> Result<Client, CliError> {
    let endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|e| CliError::Usage(format!("invalid --server {server:?}: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint.connect().await.map_err(|err| CliError::Connect {
        server: server.to_owned(),
        reason: describe_transport_error(&err),
    })?;
    Ok(KeyServiceClient::with_interceptor(channel, Auth::new(token)?))
}

fn describe_transport_error(err: &tonic::transport::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.source();
    let mut last = err.to_string();
    while let Some(e) = source {
        last = e.to_string();
        source = e.source();
    }
    last
}

/// Everything that can make a command fail.
#[derive(Debug)]
pub enum CliError {
    /// The service answered with a non-OK status.
    Status(Status),
    /// The service could not be reached.
    Connect {
        server: String,
        reason: String,
    },
    /// Arguments that parse but do not make sense together (exit code 2).
    Usage(String),
    /// Writing the output failed.
    Io(std::io::Error),
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl From<Status> for CliError {
    fn from(status: Status) -> Self {
        CliError::Status(status)
    }
}

impl From<std::io::Error> for CliError {
    fn from(err: std::io::Error) -> Self {
        CliError::Io(err)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Status(status) => {
                let message = status.message().replace('\n', " ");
                write!(f, "{}: {}", code_name(status.code()), message.trim())?;
                match status.code() {
                    Code::Unauthenticated => write!(
                        f,
                        " (pass the admin token with --token or --token-file; the quickstart \
                         service writes it to {DEFAULT_TOKEN_FILE})"
                    ),
                    Code::Unavailable => {
                        write!(f, " (is the key service running? `make run` starts it)")
                    }
                    _ => Ok(()),
                }
            }
            CliError::Connect { server, reason } => write!(
                f,
                "cannot reach the key service at {server}: {reason} (is it running? `make run` starts it)"
            ),
            CliError::Usage(msg) | CliError::Other(msg) => f.write_str(msg),
            CliError::Io(err) => write!(f, "cannot write output: {err}"),
        }
    }
}

/// The canonical upper-case name of a gRPC status code, e.g. `NOT_FOUND`.
pub fn code_name(code: Code) -> &'static str {
    tollgate_proto::code_name(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_becomes_one_line_with_canonical_code() {
        let err = CliError::from(Status::not_found("key key_abc not found"));
        assert_eq!(err.to_string(), "NOT_FOUND: key key_abc not found");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn unauthenticated_and_unavailable_carry_hints() {
        let err = CliError::from(Status::unauthenticated("missing token"));
        assert!(err.to_string().contains("--token"));
        let err =
            CliError::Connect { server: "http://127.0.0.1:7070".into(), reason: "Connection refused".into() };
        assert!(err.to_string().contains("make run"));
    }

    #[test]
    fn usage_errors_exit_with_two() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
    }

    #[test]
    fn auth_adds_bearer_header_and_debug_redacts_it() {
        let mut auth = Auth::new(Some("s3cret")).unwrap();
        assert!(!format!("{auth:?}").contains("s3cret"));
        let req = auth.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer s3cret");
    }

    #[test]
    fn token_flag_wins_and_missing_default_file_is_fine() {
        assert_eq!(resolve_token(Some("t ".into()), None).unwrap().as_deref(), Some("t"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(resolve_token(None, Some(&file)).unwrap().as_deref(), Some("from-file"));
        assert!(resolve_token(None, Some(&dir.path().join("missing"))).is_err());
    }
}
