//! Bearer-token authentication, as a tower layer in front of the key service. Admin RPCs take
//! only the admin token; the data-plane RPCs take only the data-plane token.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

use crate::error::Error;
use crate::secrets::Token;

/// Who called: which token the request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    DataPlane,
}

impl Role {
    /// Stable name, recorded as the audit actor.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin-token",
            Self::DataPlane => "dataplane-token",
        }
    }
}

/// The RPCs the data-plane token may call.
const DATA_PLANE_METHODS: [&str; 5] =
    ["VerifyKey", "ListChanges", "WatchChanges", "GetSigningKey", "ReportUsage"];

/// The role an RPC path needs.
pub fn required_role(path: &str) -> Role {
    let method = path.rsplit('/').next().unwrap_or_default();
    if DATA_PLANE_METHODS.contains(&method) { Role::DataPlane } else { Role::Admin }
}

/// The two accepted tokens, kept as SHA-256 digests so comparisons take constant time.
#[derive(Clone)]
pub struct Tokens {
    admin: [u8; 32],
    data_plane: [u8; 32],
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(<redacted>)")
    }
}

impl Tokens {
    /// The tokens of the two roles.
    pub fn new(admin: &Token, data_plane: &Token) -> Self {
        Self { admin: admin.digest(), data_plane: data_plane.digest() }
    }

    /// Checks the `authorization` header against the token the path needs.
    pub fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<Role, Error> {
        let role = required_role(path);
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(Error::Unauthenticated("missing authorization header"))?;
        let value = value.to_str().map_err(|_| Error::Unauthenticated("malformed authorization header"))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(Error::Unauthenticated("authorization must be a bearer token"));
            }
        };
        let presented = Token::new(token).map_err(|_| Error::Unauthenticated("empty bearer token"))?.digest();
        let expected = match role {
            Role::Admin => &self.admin,
            Role::DataPlane => &self.data_plane,
        };
        if tollgate_core::key::secrets_equal(&presented, expected) {
            Ok(role)
        } else {
            Err(Error::Unauthenticated("invalid token for this method"))
        }
    }
}

/// Wraps a gRPC service and rejects requests without the right token. On success the caller's
/// [`Role`] is added to the request extensions.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    tokens: Arc<Tokens>,
}

impl<S> Authenticated<S> {
    /// Puts `inner` behind the tokens.
    pub fn new(inner: S, tokens: Tokens) -> Self {
        Self { inner, tokens: Arc::new(tokens) }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.tokens.check(request.uri().path(), request.headers()) {
            Ok(role) => {
                request.extensions_mut().insert(role);
                Box::pin(self.inner.call(request))
            }
            Err(err) => {
                tracing::warn!(path = request.uri().path(), reason = %err, "rejected unauthenticated request");
                let response = Status::from(err).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        map.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        map
    }

    fn tokens() -> Tokens {
        Tokens::new(&Token::new("admin").unwrap(), &Token::new("data").unwrap())
    }

    const VERIFY: &str = "/tollgate.keys.v1.KeyService/VerifyKey";
    const CREATE: &str = "/tollgate.keys.v1.KeyService/CreateKey";

    #[test]
    fn each_role_accepts_only_its_own_token() {
        let t = tokens();
        assert_eq!(t.check(VERIFY, &headers("Bearer data")).unwrap(), Role::DataPlane);
        assert_eq!(t.check(CREATE, &headers("bearer admin")).unwrap(), Role::Admin);
        assert!(t.check(VERIFY, &headers("Bearer admin")).is_err());
        assert!(t.check(CREATE, &headers("Bearer data")).is_err());
    }

    #[test]
    fn missing_or_malformed_header_is_rejected() {
        let t = tokens();
        assert!(t.check(CREATE, &http::HeaderMap::new()).is_err());
        assert!(t.check(CREATE, &headers("admin")).is_err());
        assert!(t.check(CREATE, &headers("Basic admin")).is_err());
        assert!(t.check(CREATE, &headers("Bearer ")).is_err());
    }
}
