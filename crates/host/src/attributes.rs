//! The property paths a filter may read: Envoy 1.40's attributes and the filter state Tollgate's
//! filters write for each other.
//!
//! This list is the one source of truth: [`crate::EnvoyHost`] refuses any other path (it returns
//! nothing, as Envoy would, without a host call), the mock host panics on any other path so a unit
//! test cannot pass on a property that only the mock answers, and `docs/attributes.md` is checked
//! against it by a test. Envoy's attribute reference: "Attributes" in Envoy's architecture
//! overview (request, response, connection, upstream, metadata, configuration and Wasm
//! attributes).

/// The name of the route that matched (`route.name` in the route configuration).
pub const ROUTE_NAME: &[&str] = &["xds", "route_name"];
/// The request's protocol: `HTTP/1.0`, `HTTP/1.1`, `HTTP/2` or `HTTP/3`.
pub const REQUEST_PROTOCOL: &[&str] = &["request", "protocol"];
/// The downstream connection's remote address, `ip:port`.
pub const SOURCE_ADDRESS: &[&str] = &["source", "address"];

/// Envoy 1.40's attributes, as dot-joined paths. A path may go deeper than a listed attribute
/// only where the attribute is a map or a message ([`STRUCTURED`]).
pub const ENVOY: &[&str] = &[
    "request.path",
    "request.url_path",
    "request.host",
    "request.scheme",
    "request.method",
    "request.headers",
    "request.headers_bytes",
    "request.referer",
    "request.useragent",
    "request.time",
    "request.id",
    "request.protocol",
    "request.query",
    "request.duration",
    "request.size",
    "request.total_size",
    "response.code",
    "response.code_details",
    "response.flags",
    "response.grpc_status",
    "response.headers",
    "response.headers_bytes",
    "response.trailers",
    "response.size",
    "response.total_size",
    "response.backend_latency",
    "source.address",
    "source.port",
    "destination.address",
    "destination.port",
    "connection.id",
    "connection.mtls",
    "connection.requested_server_name",
    "connection.tls_version",
    "connection.subject_local_certificate",
    "connection.subject_peer_certificate",
    "connection.dns_san_local_certificate",
    "connection.dns_san_peer_certificate",
    "connection.uri_san_local_certificate",
    "connection.uri_san_peer_certificate",
    "connection.sha256_peer_certificate_digest",
    "connection.peer_certificate",
    "connection.transport_failure_reason",
    "connection.termination_details",
    "upstream.address",
    "upstream.port",
    "upstream.num_endpoints",
    "upstream.tls_version",
    "upstream.local_address",
    "upstream.transport_failure_reason",
    "upstream.request_attempt_count",
    "metadata",
    "filter_state",
    "xds.node",
    "xds.cluster_name",
    "xds.cluster_metadata",
    "xds.listener_direction",
    "xds.listener_metadata",
    "xds.route_name",
    "xds.route_metadata",
    "xds.virtual_host_name",
    "xds.virtual_host_metadata",
    "xds.upstream_host_metadata",
    "xds.filter_chain_name",
    "plugin_name",
    "plugin_root_id",
    "plugin_vm_id",
];

/// Attributes that are maps or messages: a path may name a field or key inside them
/// (`request.headers.<name>`, `xds.node.id`).
pub const STRUCTURED: &[&str] = &[
    "request.headers",
    "response.headers",
    "response.trailers",
    "metadata",
    "filter_state",
    "xds.node",
    "xds.cluster_metadata",
    "xds.listener_metadata",
    "xds.route_metadata",
    "xds.virtual_host_metadata",
    "xds.upstream_host_metadata",
];

/// Filter state written by Tollgate's filters (`set_property` with one path segment; Envoy keeps
/// it as filter state and answers it to later filters of the same request) starts with this.
pub use tollgate_core::identity::FILTER_STATE_PREFIX;

/// Whether Envoy 1.40 answers a `get_property` of `path`.
pub fn is_readable(path: &[&str]) -> bool {
    match path {
        [] => false,
        [one] if one.starts_with(FILTER_STATE_PREFIX) => one.len() > FILTER_STATE_PREFIX.len(),
        _ => {
            let joined = path.join(".");
            ENVOY.contains(&joined.as_str())
                || STRUCTURED.iter().any(|s| joined.strip_prefix(s).is_some_and(|rest| rest.starts_with('.')))
        }
    }
}

/// Whether a filter may write `path` with `set_property`: only its own filter state.
pub fn is_writable(path: &[&str]) -> bool {
    matches!(path, [one] if one.starts_with(FILTER_STATE_PREFIX) && one.len() > FILTER_STATE_PREFIX.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_name_lives_under_xds() {
        assert!(is_readable(ROUTE_NAME));
        assert!(!is_readable(&["route_name"]), "Envoy 1.40 answers nothing at the old path");
        assert!(is_readable(SOURCE_ADDRESS));
    }

    #[test]
    fn structured_attributes_take_inner_paths_and_others_do_not() {
        assert!(is_readable(&["request", "headers", "x-api-key"]));
        assert!(is_readable(&["xds", "node", "id"]));
        assert!(!is_readable(&["request", "path", "x"]));
        assert!(!is_readable(&["request", "headersx"]));
        assert!(!is_readable(&["xds"]));
        assert!(!is_readable(&[]));
    }

    #[test]
    fn filter_state_is_ours_only() {
        assert!(is_readable(&["tollgate.consumer_id"]));
        assert!(is_writable(&["tollgate.consumer_id"]));
        assert!(!is_writable(&["tollgate."]));
        assert!(!is_writable(ROUTE_NAME));
        assert!(!is_writable(&["tollgate", "consumer_id"]));
        assert!(!is_readable(&["consumer_id"]));
    }

    /// The docs list exactly the attributes this module accepts.
    #[test]
    fn docs_list_every_attribute() {
        let docs = include_str!("../../../docs/attributes.md");
        for attr in ENVOY {
            assert!(docs.contains(&format!("`{attr}`")), "docs/attributes.md does not list `{attr}`");
        }
        for line in docs.lines().filter(|l| l.starts_with("| `")) {
            let name = line.trim_start_matches("| `").split('`').next().unwrap_or_default();
            let path: Vec<&str> = name.split('.').collect();
            assert!(
                is_readable(&path) || name.starts_with(FILTER_STATE_PREFIX),
                "docs/attributes.md lists `{name}`, which the host refuses"
            );
        }
    }
}
