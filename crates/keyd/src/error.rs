//! Domain errors and their single mapping to gRPC statuses.

use tonic::{Code, Status};

/// Result type of the key service.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the key service, independent of the transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed; `field` names it the way the proto does.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// A consumer or key does not exist.
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    /// A consumer id or name is taken.
    #[error("{what} {id:?} already exists")]
    AlreadyExists { what: &'static str, id: String },
    /// The request is well-formed but the object's state forbids it (e.g. rotating a revoked key).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No token, or the wrong one for the RPC.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// Storage, randomness or file failures. The detail goes to the log, never to the client.
    #[error("internal error: {0}")]
    Internal(String),
    /// The store cannot be reached right now (a database server down or restarting); the
    /// request may succeed when retried. The detail goes to the log, never to the client.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    /// An invalid request field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    /// An internal failure with context.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{context}: {err}"))
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::Internal(_) => Code::Internal,
            Self::Unavailable(_) => Code::Unavailable,
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match &err {
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                Status::internal("internal error")
            }
            Error::Unavailable(detail) => {
                tracing::warn!(error = %detail, "storage unavailable");
                Status::unavailable("storage unavailable")
            }
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

impl<T> From<std::sync::PoisonError<T>> for Error {
    fn from(_: std::sync::PoisonError<T>) -> Self {
        Self::Internal("a lock was poisoned by an earlier failure".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_grpc_code() {
        let cases = [
            (Error::invalid("scopes[0]", "must not be empty"), Code::InvalidArgument),
            (Error::NotFound { what: "key", id: "key_x".into() }, Code::NotFound),
            (Error::AlreadyExists { what: "consumer", id: "a".into() }, Code::AlreadyExists),
            (Error::FailedPrecondition("revoked".into()), Code::FailedPrecondition),
            (Error::Unauthenticated("missing"), Code::Unauthenticated),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), text);
        }
    }

    #[test]
    fn internal_details_stay_out_of_the_status() {
        let status = Status::from(Error::internal("database", "disk I/O error at /secret/path"));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn an_unreachable_store_is_unavailable_without_its_details() {
        let status =
            Status::from(Error::Unavailable("database: connection refused to db.internal:5432".into()));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "storage unavailable");
    }

    #[test]
    fn a_poisoned_lock_becomes_internal() {
        let lock = std::sync::Arc::new(std::sync::Mutex::new(0));
        let clone = std::sync::Arc::clone(&lock);
        let _ = std::thread::spawn(move || {
            let _guard = clone.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        let err: Error = lock.lock().map(|_| ()).unwrap_err().into();
        assert_eq!(Status::from(err).code(), Code::Internal);
    }
}
