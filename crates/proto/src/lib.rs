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
