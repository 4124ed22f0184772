//! What each variant is: its Envoy config (the filters in front of a `direct_response` route, or,
//! for the cache variants, of a route to the origin) and the request the load generators send it,
//! with the credentials that request carries.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tollgate_bench::{Error, Result};
use tollgate_e2e::{Envoy, EnvoyOpts, Keyd, UPSTREAM_CLUSTER, wasm_dir, wasm_filter};
use tollgate_testkit::jwt::{self, Hs256, JwtKey};

pub(crate) const ISSUER: &str = "https://idp.bench.test/realms/bench";
pub(crate) const AUDIENCE: &str = "bench-api";
pub(crate) const PATH: &str = "/api/bench";
pub(crate) const BODY: &str =
    r#"{"user":"alice","password":"hunter2","items":[1,2,3],"meta":{"source":"bench"}}"#;
pub(crate) const BASELINE: &str = "no filter";
/// Size of the body the cache variants' origin answers with.
pub(crate) const CACHE_BODY_BYTES: usize = 10_000;
/// What the cache variants request (GET, no body, no credentials): the origin answers it with
/// [`CACHE_BODY_BYTES`] bytes and `cache-control: public, max-age=3600`.
pub(crate) const CACHE_PATH: &str = "/cacheable/10000";
/// The baseline of the cache comparison: Envoy alone, every request to the origin.
pub(crate) const CACHE_BASELINE: &str = "cache-origin";
/// Tollgate's cache, compared with Envoy's own.
pub(crate) const TOLLGATE_CACHE: &str = "tollgate-cache";
/// Envoy's cache filters with their in-memory store: `cache_v2` first (the native equivalent).
pub(crate) const ENVOY_CACHES: [&str; 2] = ["envoy-cache", "envoy-cache v1"];

/// The part a variant plays in the cache comparison: its route goes to the origin, its requests
/// are GETs of [`CACHE_PATH`], and the warm-up checks its answers are what it claims.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum CacheRole {
    /// No cache: every request reaches the origin.
    Origin,
    /// Tollgate's cache answers: `cache-status: tollgate; hit…`, the origin not asked.
    Tollgate,
    /// Envoy's cache answers: an `age` header, the origin not asked.
    Envoy,
}

/// Which bearer token a variant's requests carry.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Token {
    Hs256,
    Es256,
}

/// One Envoy configuration to measure.
pub(crate) struct Variant {
    pub(crate) name: String,
    pub(crate) what: String,
    pub(crate) native: Option<String>,
    pub(crate) filters: Vec<Value>,
    pub(crate) keyd: bool,
    pub(crate) token: Token,
    /// Every request carries its own RFC 9421 signature (see [`signed_requests`]).
    pub(crate) signed: bool,
    /// A variant of the cache comparison (routed to the origin, GETs of [`CACHE_PATH`]).
    pub(crate) cache: Option<CacheRole>,
    /// Clusters the filters call besides the key service's (the rate-limit service's).
    pub(crate) clusters: Vec<Value>,
    /// The route in place of the `direct_response` one (a filter that needs a route entry).
    pub(crate) route: Option<Value>,
}

impl Variant {
    pub(crate) fn new(name: &str, what: &str, filters: Vec<Value>) -> Variant {
        Variant {
            name: name.to_owned(),
            what: what.to_owned(),
            native: None,
            filters,
            keyd: false,
            token: Token::Hs256,
            signed: false,
            cache: None,
            clusters: Vec::new(),
            route: None,
        }
    }

    pub(crate) fn cluster(mut self, cluster: Value) -> Variant {
        self.clusters.push(cluster);
        self
    }

    pub(crate) fn route(mut self, route: Value) -> Variant {
        self.route = Some(route);
        self
    }

    pub(crate) fn cache(mut self, role: CacheRole) -> Variant {
        self.cache = Some(role);
        self
    }

    /// The path the load generators request.
    pub(crate) fn path(&self) -> &'static str {
        if self.cache.is_some() { CACHE_PATH } else { PATH }
    }

    pub(crate) fn signed(mut self) -> Variant {
        self.signed = true;
        self
    }

    pub(crate) fn native(mut self, native: &str) -> Variant {
        self.native = Some(native.to_owned());
        self
    }

    pub(crate) fn with_keyd(mut self) -> Variant {
        self.keyd = true;
        self
    }

    pub(crate) fn token(mut self, token: Token) -> Variant {
        self.token = token;
        self
    }
}

/// What every request carries.
pub(crate) struct Credentials {
    api_key: String,
    hs256: String,
    es256: String,
}

/// The key sets that verify the [`Credentials`]' tokens, for the providers' inline JWKS.
pub(crate) struct KeySets {
    pub(crate) hs256: Value,
    pub(crate) es256: Value,
}

impl Credentials {
    /// The API key, and an HS256 and an ES256 token (fresh keys) for [`ISSUER`]/[`AUDIENCE`], valid
    /// for six hours.
    pub(crate) fn mint(api_key: String) -> Result<(Credentials, KeySets)> {
        let now =
            SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| Error(format!("clock: {e}")))?.as_secs();
        let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 6 * 3600, "scope": "read"});
        let hs_key = Hs256::random()?;
        let es_key = jwt::random_es256()?;
        let credentials = Credentials {
            api_key,
            hs256: jwt::mint(&hs_key, "hs", &claims),
            es256: jwt::mint(&es_key, "es", &claims),
        };
        let keys = KeySets {
            hs256: json!({"keys": [hs_key.jwk("hs")]}),
            es256: json!({"keys": [es_key.jwk("es")]}),
        };
        Ok((credentials, keys))
    }

    pub(crate) fn headers(&self, token: Token) -> Vec<(String, String)> {
        let bearer = match token {
            Token::Hs256 => &self.hs256,
            Token::Es256 => &self.es256,
        };
        vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("x-api-key".to_owned(), self.api_key.clone()),
            ("authorization".to_owned(), format!("Bearer {bearer}")),
        ]
    }
}

/// Signed requests the request-signing variant gets per second of load, each with its own nonce:
/// more than wrk sends it, so none is a replay.
pub(crate) const SIGNED_PER_SECOND: usize = 12_000;

/// The signing key of the request-signing variant.
pub(crate) struct SigningKey {
    pub(crate) key_id: String,
    pub(crate) secret: Vec<u8>,
}

/// `n` requests to `url` (POST [`BODY`]), each signed with a fresh nonce, as (Signature-Input,
/// Signature) pairs, and the Content-Digest they share.
pub(crate) fn signed_requests(
    key: &SigningKey,
    url: &str,
    n: usize,
) -> Result<(Vec<(String, String)>, String)> {
    let now =
        SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| Error(format!("clock: {e}")))?.as_secs()
            as i64;
    let material = tollgate_signing::SigningMaterial::Hmac(key.secret.clone());
    let request = tollgate_signing::Request {
        method: "POST",
        url,
        headers: vec![("content-type".to_owned(), b"application/json".to_vec())],
        body: Some(BODY.as_bytes()),
    };
    let mut out = Vec::with_capacity(n);
    let mut digest = String::new();
    for _ in 0..n {
        let mut options = tollgate_signing::Options::new(key.key_id.clone(), now);
        options.nonce = Some(tollgate_signing::random_nonce().map_err(|e| Error(e.0))?);
        let signed = tollgate_signing::sign(&request, &material, &options).map_err(|e| Error(e.0))?;
        digest = signed.content_digest.unwrap_or_default();
        out.push((signed.signature_input, signed.signature));
    }
    Ok((out, digest))
}

/// The variants, the no-filter baseline first.
pub(crate) fn variants(keyd: &Keyd, api_key: &str, keys: &KeySets, noop_path: &Path) -> Vec<Variant> {
    let (hs_jwks, es_jwks) = (&keys.hs256, &keys.es256);
    let module = |name: &str| wasm_dir().join(format!("{name}.wasm"));
    let tollgate = |name: &str, root: &str, module_name: &str, config: &Value| {
        let mut filter = wasm_filter(name, root, &module(module_name), config);
        // One VM per module, named after it.
        filter["typed_config"]["config"]["vm_config"]["vm_id"] = json!(module_name);
        filter
    };
    let mut key_auth_config = keyd.key_auth_config();
    key_auth_config["cache"] = json!({"ttl": "1h", "stale_window": "1h"});
    let key_auth = tollgate("key_auth", "tollgate.key_auth", "tollgate_key_auth", &key_auth_config);
    let never_empty = json!([{"rate": 1_000_000_000u64, "per": "second"}]);
    let rate_limit = tollgate(
        "rate_limit",
        "tollgate.rate_limit",
        "tollgate_rate_limit",
        &json!({"slots": 1024, "headers": {"ietf": false}, "rules": [{"name": "bench", "limits": never_empty}]}),
    );
    let chain_rate_limit_config = json!({"slots": 1024, "headers": {"ietf": false},
        "rules": [{"name": "per-consumer", "by": ["consumer"], "key_limits": false, "limits": never_empty}]});
    let chain_rate_limit =
        tollgate("rate_limit", "tollgate.rate_limit", "tollgate_rate_limit", &chain_rate_limit_config);
    let transform_config = json!({
        "max_body_bytes": 65536,
        "rules": [{
            "name": "bench",
            "match": {"path_prefix": "/api/"},
            "request": {
                "headers": [
                    {"op": "set", "name": "x-gateway", "value": "tollgate"},
                    {"op": "add", "name": "x-api-version", "value": "2"},
                    {"op": "remove", "name": "x-debug"}
                ],
                "body": [
                    {"op": "set", "path": "meta.gateway", "value": "tollgate"},
                    {"op": "remove", "path": "password"}
                ]
            },
            "response": {"headers": [{"op": "set", "name": "x-transformed", "value": "{method}"}]}
        }]
    });
    let transform = tollgate("transform", "tollgate.transform", "tollgate_transform", &transform_config);
    // The same chain as the stages of one filter: the pipeline of the bundle module.
    let pipeline = tollgate(
        "pipeline",
        "tollgate.pipeline",
        "tollgate",
        &json!({"stages": [
            {"filter": "key_auth", "config": key_auth_config},
            {"filter": "rate_limit", "config": chain_rate_limit_config},
            {"filter": "transform", "config": transform_config}
        ]}),
    );
    let transform_headers = tollgate(
        "transform",
        "tollgate.transform",
        "tollgate_transform",
        &json!({
            "rules": [{
                "name": "bench",
                "match": {"path_prefix": "/api/"},
                "request": {"headers": [
                    {"op": "set", "name": "x-gateway", "value": "tollgate"},
                    {"op": "add", "name": "x-api-version", "value": "2"},
                    {"op": "remove", "name": "x-debug"}
                ]},
                "response": {"headers": [{"op": "set", "name": "x-transformed", "value": "yes"}]}
            }]
        }),
    );
    // A filter from the bundle module: same root id and config, one shared VM.
    let bundle = |mut filter: Value| {
        let code = &mut filter["typed_config"]["config"]["vm_config"];
        code["vm_id"] = json!("tollgate");
        code["code"]["local"]["filename"] = json!(module("tollgate").to_string_lossy());
        filter
    };
    let sdk_noop = {
        let mut filter = wasm_filter(
            "probe",
            "probe",
            &wasm_dir().join("tollgate_bench_probe.wasm"),
            &json!({"call": "nothing", "n": 0}),
        );
        filter["typed_config"]["config"]["vm_config"]["vm_id"] = json!("probe");
        filter
    };
    // A nonce per request, remembered for the run: every request makes one compare-and-swap round
    // in the replay table.
    let request_signing = tollgate(
        "request_signing",
        "tollgate.request_signing",
        "tollgate_request_signing",
        &json!({
            "key_service": keyd.key_auth_config()["key_service"],
            "policy": {"require_nonce": true, "max_age": "1h", "clock_skew": "1h"},
            "replay": {"slots": 1_048_576}
        }),
    );
    let jwt_auth = |alg: &str, jwks: &Value| {
        tollgate(
            "jwt_auth",
            "tollgate.jwt_auth",
            "tollgate_jwt_auth",
            &json!({"providers": [{"name": "bench", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": [alg], "jwks": jwks}]}),
        )
    };
    let jwt_authn = |jwks: &Value| {
        json!({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {"bench": {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "local_jwks": {"inline_string": jwks.to_string()},
                    "forward": true,
                    "jwt_cache_config": {"jwt_cache_size": 100}
                }},
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]
            }
        })
    };
    let local_ratelimit = json!({
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench",
            "token_bucket": {"max_tokens": 1_000_000_000u64, "tokens_per_fill": 1_000_000_000u64, "fill_interval": "1s"},
            "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "bench_enabled"},
            "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "bench_enforced"}
        }
    });
    let lua = json!({
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": format!(
                "function envoy_on_request(h)\n  if h:headers():get(\"x-api-key\") ~= \"{api_key}\" then\n    h:respond({{[\":status\"] = \"401\"}}, \"denied\")\n  end\nend\n"
            )}
        }
    });
    let noop = wasm_filter("noop", "noop", noop_path, &json!(""));
    // The cache as docs/cache.md shows it, refreshing from the route's own cluster.
    let tollgate_cache = tollgate(
        "cache",
        "tollgate.cache",
        "tollgate_cache",
        &json!({
            "max_object_bytes": 1_048_576,
            "max_memory_bytes": 67_108_864,
            "default_methods": ["GET", "HEAD"],
            "query": {"exclude": ["utm_source", "utm_medium", "utm_campaign"]},
            "per_consumer": false,
            "stale_while_revalidate_max": "1h",
            "stale_if_error_max": "1d",
            "origin_cluster": UPSTREAM_CLUSTER,
            "lock_timeout": "5s"
        }),
    );
    // Envoy 1.40's two cache filters, each with its in-memory store (both marked work in progress).
    let envoy_cache_v2 = json!({
        "name": "envoy.filters.http.cache_v2",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cache_v2.v3.CacheV2Config",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.http.cache_v2.simple_http_cache.v3.SimpleHttpCacheV2Config"
            }
        }
    });
    let envoy_cache_v1 = json!({
        "name": "envoy.filters.http.cache",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
            }
        }
    });
    let [envoy_cache, envoy_cache_old] = ENVOY_CACHES;

    vec![
        Variant::new(BASELINE, "Envoy alone (router + direct_response)", vec![]),
        Variant::new(
            "wasm no-op",
            "a proxy-wasm module that does nothing: the fixed cost of a wasm filter in V8",
            vec![noop],
        ),
        Variant::new(
            "wasm SDK no-op",
            "a Rust proxy-wasm SDK module that does nothing (every callback exported, as in every Tollgate filter)",
            vec![sdk_noop],
        ),
        Variant::new("key-auth", "key-auth, the key already cached", vec![key_auth.clone()])
            .native("lua header check")
            .with_keyd(),
        Variant::new(
            "lua header check",
            "native `lua` filter comparing x-api-key with a constant",
            vec![lua],
        ),
        Variant::new("rate-limit", "rate-limit, one rule, a bucket that never empties", vec![rate_limit])
            .native("local_ratelimit"),
        Variant::new(
            "local_ratelimit",
            "native `local_ratelimit`, a bucket that never empties",
            vec![local_ratelimit],
        ),
        Variant::new(
            "jwt-auth HS256",
            "jwt-auth, inline JWKS, the same HS256 token every time",
            vec![jwt_auth("HS256", hs_jwks)],
        )
        .native("jwt_authn HS256"),
        Variant::new(
            "jwt_authn HS256",
            "native `jwt_authn`, same provider, key and token",
            vec![jwt_authn(hs_jwks)],
        ),
        Variant::new(
            "jwt-auth ES256",
            "jwt-auth, inline JWKS, the same ES256 token every time",
            vec![jwt_auth("ES256", es_jwks)],
        )
        .native("jwt_authn ES256")
        .token(Token::Es256),
        Variant::new(
            "jwt_authn ES256",
            "native `jwt_authn`, same provider, key and token",
            vec![jwt_authn(es_jwks)],
        )
        .token(Token::Es256),
        Variant::new(
            "transform",
            "transform: 3 request header ops, 2 JSON body ops, 1 response header op",
            vec![transform.clone()],
        ),
        Variant::new(
            "transform headers",
            "transform: 3 request header ops, 1 response header op (no body rules)",
            vec![transform_headers],
        ),
        Variant::new(
            "request-signing",
            "request-signing: HMAC-SHA256 over method, authority, path, query and Content-Digest of the body, a fresh nonce per request (no latency: oha repeats one request, which would be a replay)",
            vec![request_signing],
        )
        .with_keyd()
        .signed(),
        Variant::new(
            "chain",
            "key-auth → rate-limit (per consumer) → transform, each its own module and VM",
            vec![key_auth.clone(), chain_rate_limit.clone(), transform.clone()],
        )
        .with_keyd(),
        Variant::new(
            "chain (bundle)",
            "the same chain from the bundle module `tollgate.wasm`: one VM for the three filters",
            vec![bundle(key_auth), bundle(chain_rate_limit), bundle(transform)],
        )
        .with_keyd(),
        Variant::new(
            "pipeline",
            "the same chain as the stages of one filter (`tollgate.pipeline`): one HTTP context, one header read",
            vec![pipeline],
        )
        .with_keyd(),
        Variant::new(
            CACHE_BASELINE,
            "Envoy alone routing to the origin, no cache: every GET fetches the 10,000-byte body from the origin",
            vec![],
        )
        .cache(CacheRole::Origin),
        Variant::new(
            TOLLGATE_CACHE,
            "the cache filter (`tollgate.cache`, the configuration of docs/cache.md), every GET a fresh hit of the 10,000-byte body",
            vec![tollgate_cache],
        )
        .native(envoy_cache)
        .cache(CacheRole::Tollgate),
        Variant::new(
            envoy_cache,
            "native `cache_v2` (`CacheV2Config`) with its in-memory store (`SimpleHttpCacheV2Config`), every GET a hit",
            vec![envoy_cache_v2],
        )
        .cache(CacheRole::Envoy),
        Variant::new(
            envoy_cache_old,
            "native `cache` (`CacheConfig`), the older cache filter, with its in-memory store (`SimpleHttpCacheConfig`), every GET a hit",
            vec![envoy_cache_v1],
        )
        .cache(CacheRole::Envoy),
    ]
}

/// Envoy with `filters` in front of a `direct_response` route — or, given an `origin`, of a route
/// to it — without access log, at warn level.
pub(crate) async fn start_envoy(
    filters: &[Value],
    keyd: Option<std::net::SocketAddr>,
    workers: u32,
    origin: Option<std::net::SocketAddr>,
) -> Result<Envoy> {
    start_envoy_with(filters, &[], None, keyd, workers, origin).await
}

/// [`start_envoy`] with more `clusters`, and `route` in place of the `direct_response` one.
pub(crate) async fn start_envoy_with(
    filters: &[Value],
    clusters: &[Value],
    route: Option<&Value>,
    keyd: Option<std::net::SocketAddr>,
    workers: u32,
    origin: Option<std::net::SocketAddr>,
) -> Result<Envoy> {
    // Without an origin the upstream cluster is never used: the route answers directly.
    let upstream = origin.unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 9)));
    let mut opts = EnvoyOpts::new(upstream).workers(workers);
    if let Some(addr) = keyd {
        opts = opts.keyd(addr);
    }
    for filter in filters {
        opts = opts.http_filter(filter.clone());
    }
    for cluster in clusters {
        opts = opts.cluster(cluster.clone());
    }
    let mut config = opts.render();
    let hcm =
        &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    if let Some(hcm) = hcm.as_object_mut() {
        hcm.remove("access_log");
    }
    if let Some(route) = route {
        hcm["route_config"]["virtual_hosts"][0]["routes"][0] = route.clone();
    } else if origin.is_none() {
        hcm["route_config"]["virtual_hosts"][0]["routes"][0] = json!({
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": "{\"ok\":true}"}},
            "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}]
        });
    }
    Envoy::start_config(&config, workers, &["-l".to_owned(), "warn".to_owned()])
        .await
        .map_err(|log| Error(format!("Envoy did not start:\n{}", last_lines(&log, 30))))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every Tollgate filter at once (the memory measurement): each its own module and VM, or, with
/// `bundled`, all from the bundle module in one VM.
pub(crate) fn every_filter(keyd: &Keyd, hs_jwks: &Value, bundled: bool) -> Vec<Value> {
    let module = |name: &str| wasm_dir().join(format!("{}.wasm", if bundled { "tollgate" } else { name }));
    let mut key_auth = keyd.key_auth_config();
    key_auth["cache"] = json!({"ttl": "1h"});
    vec![
        wasm_filter("key_auth", "tollgate.key_auth", &module("tollgate_key_auth"), &key_auth),
        wasm_filter("jwt_auth", "tollgate.jwt_auth", &module("tollgate_jwt_auth"), &json!({"providers": [{"name": "bench", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["HS256"], "jwks": hs_jwks}]})),
        wasm_filter("rate_limit", "tollgate.rate_limit", &module("tollgate_rate_limit"), &json!({"rules": [{"name": "all", "limits": [{"rate": 1_000_000, "per": "second"}]}]})),
        wasm_filter("transform", "tollgate.transform", &module("tollgate_transform"), &json!({"rules": [{"name": "t", "request": {"headers": [{"op": "set", "name": "x-a", "value": "b"}]}}]})),
    ]
    .into_iter()
    .map(|mut f| {
        let vm = if bundled { json!("tollgate") } else { f["typed_config"]["config"]["name"].clone() };
        f["typed_config"]["config"]["vm_config"]["vm_id"] = vm;
        f
    })
    .collect::<Vec<_>>()
}
