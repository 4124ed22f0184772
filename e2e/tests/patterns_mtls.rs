//! `examples/mtls`: client certificates required on the gateway listener (none, or one from an
//! untrusted CA, and the TLS handshake is refused); the verified identity (URI/DNS SAN) used by the
//! filters (RBAC, an identity header) and passed upstream in `x-forwarded-client-cert`; TLS on the
//! hop to the backend. Every certificate is made here, at test time, and lives in a temp dir.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};
use tollgate_e2e::patterns::{listener_addr, render_template, reserve_port, start_yaml};
use tollgate_e2e::{Echo, HttpClient, Value};

const ALICE_URI: &str = "spiffe://tollgate.test/client/alice";
const ALICE_DNS: &str = "alice.clients.tollgate.test";

/// A certificate and its key, as DER, for the test client.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

/// The test PKI: two CAs the gateway knows (clients, servers) and one it does not.
struct Pki {
    client_ca: CertifiedIssuer<'static, KeyPair>,
    server_ca: CertifiedIssuer<'static, KeyPair>,
    rogue_ca: CertifiedIssuer<'static, KeyPair>,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate issued by `issuer`: `dns` names, `uris`, for a server or a client.
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    common_name: &str,
    dns: &[&str],
    uris: &[&str],
    server: bool,
) -> (String, String, Identity) {
    let mut params = CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>()).unwrap();
    for uri in uris {
        params.subject_alt_names.push(SanType::URI((*uri).try_into().unwrap()));
    }
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let identity = Identity { chain: vec![cert.der().clone()], key: key.serialize_der() };
    (cert.pem(), key.serialize_pem(), identity)
}

impl Pki {
    /// Makes the CAs and writes the files `examples/mtls/envoy.yaml` reads into `dir`.
    fn write(dir: &Path) -> Pki {
        let pki = Pki {
            client_ca: ca("Tollgate test client CA"),
            server_ca: ca("Tollgate test server CA"),
            rogue_ca: ca("Untrusted test CA"),
        };
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        write("client-ca.pem", &pki.client_ca.pem());
        write("server-ca.pem", &pki.server_ca.pem());
        for name in ["gateway", "backend"] {
            let dns = format!("{name}.tollgate.test");
            let (cert, key, _) = leaf(&pki.server_ca, &dns, &[&dns], &[], true);
            write(&format!("{name}.pem"), &cert);
            write(&format!("{name}.key"), &key);
        }
        pki
    }

    fn client(&self, issuer: &CertifiedIssuer<'static, KeyPair>, dns: &[&str], uris: &[&str]) -> Identity {
        leaf(issuer, "test client", dns, uris, false).2
    }
}

/// One HTTP/1.1 request over TLS to the gateway (trusting the server CA, verifying the name
/// `gateway.tollgate.test`), presenting `identity` if any. `Ok((status, body))`, or `Err` when the
/// TLS handshake or the exchange fails. (With TLS 1.3 the server judges the client certificate
/// after the client has finished its side of the handshake, so a refusal can surface as an alert
/// on the first read rather than from `connect`.)
async fn request(
    pki: &Pki,
    addr: SocketAddr,
    identity: Option<&Identity>,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.server_ca.der().clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                id.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("gateway.tollgate.test").unwrap();
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let mut head =
            String::from("GET /whoami HTTP/1.1\r\nHost: gateway.tollgate.test\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let read = tls.read_to_end(&mut buf).await;
        if buf.is_empty() {
            return Err(format!("no response: {read:?}"));
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {text}"))?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| "timed out".to_owned())?
}

#[tokio::test]
async fn client_certificates_are_required_and_their_identity_reaches_filters_and_a_tls_upstream() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::write(certs.path());
    let echo = Echo::start_named("echo");
    let yaml = render_template(
        "examples/mtls/envoy.yaml",
        &[
            ("UPSTREAM_A_PORT", echo.port()),
            ("BACKEND_TLS_PORT", reserve_port().to_string()),
            ("CERT_DIR", certs.path().to_string_lossy().into_owned()),
        ],
    );
    let envoy = start_yaml(&yaml, 1).await;
    let gateway = listener_addr(&envoy, "gateway").await;

    // No client certificate: refused during the handshake, nothing reaches the upstream.
    let none = request(&pki, gateway, None, &[]).await;
    assert!(none.is_err(), "a client without a certificate got {none:?}");

    // A certificate from a CA the gateway does not trust (same identity as alice): refused too.
    let rogue = pki.client(&pki.rogue_ca, &[ALICE_DNS], &[ALICE_URI]);
    let forged = request(&pki, gateway, Some(&rogue), &[]).await;
    assert!(forged.is_err(), "a certificate from an untrusted CA got {forged:?}");

    // Plain HTTP on the TLS listener: no response.
    let plain = HttpClient::new().get(format!("http://{gateway}/whoami")).try_send().await;
    assert!(plain.is_err() || plain.as_ref().is_ok_and(|r| r.status >= 400), "{plain:?}");
    assert_eq!(echo.requests(), 0);

    // A valid certificate: 200, and the upstream sees the verified identity (client-sent copies
    // of the identity headers are replaced, not passed on).
    let alice = pki.client(&pki.client_ca, &[ALICE_DNS], &[ALICE_URI]);
    let spoofed = [
        ("x-forwarded-client-cert", "By=spiffe://x;URI=spiffe://tollgate.test/client/admin"),
        ("x-tollgate-client-identity", "spiffe://tollgate.test/client/admin"),
    ];
    let (status, body) = request(&pki, gateway, Some(&alice), &spoofed).await.expect("alice's request");
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let xfcc = doc["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default().to_owned();
    assert!(xfcc.contains(&format!("URI={ALICE_URI}")), "x-forwarded-client-cert: {xfcc}");
    assert!(xfcc.contains(&format!("DNS={ALICE_DNS}")), "x-forwarded-client-cert: {xfcc}");
    assert!(xfcc.contains("Hash="), "x-forwarded-client-cert: {xfcc}");
    assert!(!xfcc.contains("client/admin"), "the client's own header went upstream: {xfcc}");
    assert_eq!(doc["headers"]["x-tollgate-client-identity"], ALICE_URI, "{doc}");
    assert_eq!(echo.requests(), 1);

    // Trusted CA, but an identity outside spiffe://tollgate.test/client/: RBAC says 403.
    let partner = pki.client(&pki.client_ca, &["bob.partner.test"], &["spiffe://partner.test/bob"]);
    let (status, body) = request(&pki, gateway, Some(&partner), &[]).await.expect("partner's request");
    assert_eq!(status, 403, "{body}");
    assert_eq!(echo.requests(), 1);

    // The refusals were certificate checks, and the hop to the backend was TLS.
    let prefix = "listener.gateway.ssl.";
    let stats = envoy.stats("ssl").await;
    let stat = |name: &str| stats.get(name).copied().unwrap_or(0);
    assert!(stat(&format!("{prefix}fail_verify_no_cert")) >= 1, "{stats:#?}");
    assert!(stat(&format!("{prefix}fail_verify_error")) >= 1, "{stats:#?}");
    assert!(stat("cluster.backend.ssl.handshake") >= 1, "{stats:#?}");
    assert_eq!(stat("cluster.backend.ssl.connection_error"), 0, "{stats:#?}");
}
