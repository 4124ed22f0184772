//! Generated types of the `tollgate.keys.v1` protobuf package, and their conversions to the
//! core's domain types ([`convert`]).

mod convert;

pub use convert::UnspecifiedPeriod;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod keys {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/tollgate.keys.v1.rs"));
    }
}

pub use keys::v1;

/// Encoded `FileDescriptorSet` of the package, for gRPC server reflection.
#[cfg(feature = "grpc")]
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tollgate_descriptor.bin"));

/// Full gRPC service name of the key service.
pub const KEY_SERVICE: &str = "tollgate.keys.v1.KeyService";

/// The canonical upper-case name of a gRPC status code (`NOT_FOUND`), as gRPC's documentation and
/// other implementations spell it.
#[cfg(feature = "grpc")]
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
