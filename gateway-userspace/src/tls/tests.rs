//! TLS server tests: real rustls handshakes in memory, certificates generated at run time.

use std::sync::Arc;
use std::time::Duration;

use gateway_config::{compile, parse_str, Bind, CompileOptions, ListenerId, RouteTable};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::TlsConnector;

use super::*;

// ---------------------------------------------------------------------------------------
// Certificates

#[derive(Clone, Copy, Debug)]
enum KeyForm {
    EcdsaPkcs8,
    RsaPkcs8,
    RsaPkcs1,
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("ca cert").der().clone();
        Ca {
            issuer: Issuer::new(params, key),
            cert,
        }
    }

    fn pem(&self) -> String {
        pem_block("CERTIFICATE", &self.cert)
    }

    /// An intermediate CA signed by this one.
    fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("intermediate")
            .der()
            .clone();
        Ca {
            issuer: Issuer::new(params, key),
            cert,
        }
    }

    fn leaf(&self, names: &[&str], form: KeyForm, eku: ExtendedKeyUsagePurpose) -> Leaf {
        let key = match form {
            KeyForm::EcdsaPkcs8 => KeyPair::generate(),
            KeyForm::RsaPkcs8 | KeyForm::RsaPkcs1 => KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256),
        }
        .expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![eku];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf")
            .der()
            .clone();
        let pkcs8 = key.serialize_der();
        let key_pem = match form {
            KeyForm::RsaPkcs1 => pem_block("RSA PRIVATE KEY", pkcs8_inner_key(&pkcs8)),
            _ => pem_block("PRIVATE KEY", &pkcs8),
        };
        Leaf {
            chain: vec![cert],
            key: PrivateKeyDer::Pkcs8(pkcs8.into()),
            key_pem,
        }
    }

    fn server(&self, names: &[&str], form: KeyForm) -> Leaf {
        self.leaf(names, form, ExtendedKeyUsagePurpose::ServerAuth)
    }
}

struct Leaf {
    /// Leaf first.
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    key_pem: String,
}

impl Leaf {
    fn with_intermediate(mut self, intermediate: &Ca) -> Leaf {
        self.chain.push(intermediate.cert.clone());
        self
    }

    fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_block("CERTIFICATE", c))
            .collect()
    }

    /// A `kubernetes.io/tls` Secret.
    fn secret(&self, name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: ns}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&self.chain_pem()),
            indent(&self.key_pem)
        )
    }
}

/// The `privateKey` OCTET STRING of a PKCS#8 `PrivateKeyInfo` (for RSA: PKCS#1).
fn pkcs8_inner_key(der: &[u8]) -> &[u8] {
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let (tag, len0) = (b[0], b[1]);
        let (len, hdr) = if len0 < 0x80 {
            (usize::from(len0), 2)
        } else {
            let n = usize::from(len0 & 0x7f);
            (
                b[2..2 + n].iter().fold(0, |a, x| a << 8 | usize::from(*x)),
                2 + n,
            )
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (_, info, _) = tlv(der);
    let (_, _, rest) = tlv(info); // version
    let (_, _, rest) = tlv(rest); // algorithm
    let (tag, key, _) = tlv(rest);
    assert_eq!(tag, 0x04, "privateKey OCTET STRING");
    key
}

fn pem_block(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, x)| a | u32::from(*x) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

// ---------------------------------------------------------------------------------------
// Tables

fn table(docs: &[String]) -> Arc<RouteTable> {
    let (m, _) = parse_str("test.yaml", &docs.join("\n---\n")).expect("manifests parse");
    compile(&m, &CompileOptions::default()).table
}

fn gateway(listeners: &str) -> String {
    gateway_with(listeners, "")
}

fn gateway_with(listeners: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: ns}}\nspec:\n  gatewayClassName: x\n  addresses: [{{value: 127.0.0.1}}]\n{spec_extra}  listeners:\n{listeners}"
    )
}

fn https(name: &str, hostname: Option<&str>, secret: &str) -> String {
    let host = hostname.map_or(String::new(), |h| format!(", hostname: \"{h}\""));
    format!("  - {{name: {name}, protocol: HTTPS, port: 443{host}, tls: {{certificateRefs: [{{name: {secret}}}]}}}}\n")
}

fn bindings(t: Arc<RouteTable>) -> TlsBindings {
    TlsBindings::build(t, &SessionResumption::new().expect("ticketer"))
}

fn listener_named(t: &RouteTable, name: &str) -> ListenerId {
    t.listeners()
        .iter()
        .find(|l| &*l.name == name)
        .map(|l| l.id)
        .expect("listener")
}

// ---------------------------------------------------------------------------------------
// Clients and handshakes

#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that accepts any server certificate (to see which one is served).
fn any_cert_client(alpn: &[&[u8]]) -> ClientConfig {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider())))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c
}

fn verifying_client(ca: &Ca, client_cert: Option<&Leaf>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.clone()).expect("root");
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    match client_cert {
        None => b.with_no_client_auth(),
        Some(l) => b
            .with_client_auth_cert(l.chain.clone(), l.key.clone_key())
            .expect("client cert"),
    }
}

type ClientStream = tokio_rustls::client::TlsStream<DuplexStream>;

/// One handshake over an in-memory pipe, both sides; then the server sends one byte
/// and the client reads it (so a TLS 1.3 client has processed its tickets).
async fn handshake(
    b: &TlsBindings,
    client: &Arc<ClientConfig>,
    sni: &str,
) -> Result<(Terminated<DuplexStream>, ClientStream), String> {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    let connector = TlsConnector::from(client.clone());
    let (server, client) = tokio::join!(
        accept(b, 0, s, Duration::from_secs(5)),
        connector.connect(name, c)
    );
    let mut server = server.map_err(|e| format!("server: {e}"))?;
    let mut client = client.map_err(|e| format!("client: {e}"))?;
    server
        .stream
        .write_all(b"x")
        .await
        .map_err(|e| format!("server write: {e}"))?;
    server
        .stream
        .flush()
        .await
        .map_err(|e| format!("server flush: {e}"))?;
    let mut one = [0u8; 1];
    client
        .read_exact(&mut one)
        .await
        .map_err(|e| format!("client read: {e}"))?;
    Ok((server, client))
}

fn served_leaf(client: &ClientStream) -> CertificateDer<'static> {
    client
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .clone()
        .into_owned()
}

fn kind(t: &Terminated<DuplexStream>) -> Option<HandshakeKind> {
    t.stream.get_ref().1.handshake_kind()
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn the_certificate_is_chosen_by_sni_exact_then_longest_wildcard_then_catch_all() {
    let ca = Ca::new("ca");
    let certs = [
        ("any", None, ca.server(&["any.test"], KeyForm::EcdsaPkcs8)),
        (
            "wild",
            Some("*.example.com"),
            ca.server(&["*.example.com"], KeyForm::EcdsaPkcs8),
        ),
        (
            "deep",
            Some("*.b.example.com"),
            ca.server(&["*.b.example.com"], KeyForm::EcdsaPkcs8),
        ),
        (
            "exact",
            Some("foo.example.com"),
            ca.server(&["foo.example.com"], KeyForm::EcdsaPkcs8),
        ),
    ];
    let mut docs = vec![gateway(
        &certs
            .iter()
            .map(|(n, h, _)| https(n, *h, n))
            .collect::<String>(),
    )];
    docs.extend(certs.iter().map(|(n, _, l)| l.secret(n)));
    let t = table(&docs);
    let b = bindings(t.clone());
    assert!(b.problems().is_empty(), "{:?}", b.problems());
    let bind_tls = b.get(0).expect("TLS bind");
    assert!(bind_tls.server_config().is_some(), "one policy, one config");
    let leaf = |name: &str| {
        certs
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, l)| l.chain[0].clone())
            .expect("cert")
    };
    let client = Arc::new(any_cert_client(&[]));
    let cases = [
        ("foo.example.com", "exact"),
        ("FOO.example.com", "exact"),
        ("bar.example.com", "wild"),
        ("x.b.example.com", "deep"),
        ("x.y.b.example.com", "deep"),
        ("b.example.com", "wild"),
        ("example.com", "any"),
        ("other.test", "any"),
        // An IP address sends no SNI: the listener without hostname serves it.
        ("127.0.0.1", "any"),
    ];
    for (sni, want) in cases {
        let (server, client) = handshake(&b, &client, sni).await.expect(sni);
        assert_eq!(served_leaf(&client), leaf(want), "sni {sni}");
        assert_eq!(server.listener, listener_named(&t, want), "sni {sni}");
        // The same choice as the table's own `certificates_for`.
        let sni_opt = (sni != "127.0.0.1").then_some(sni);
        let from_table = t.certificates_for(&t.binds()[0], sni_opt).expect("certs");
        assert_eq!(from_table[0].chain[0], leaf(want), "sni {sni}");
    }
}

#[tokio::test]
async fn without_a_catch_all_an_unknown_sni_fails_the_handshake() {
    let ca = Ca::new("ca");
    let leaf = ca.server(&["foo.example.com"], KeyForm::EcdsaPkcs8);
    let t = table(&[
        gateway(&https("foo", Some("foo.example.com"), "c")),
        leaf.secret("c"),
    ]);
    let b = bindings(t);
    let client = Arc::new(any_cert_client(&[]));
    assert!(handshake(&b, &client, "foo.example.com").await.is_ok());
    let err = handshake(&b, &client, "bar.example.com")
        .await
        .expect_err("fails");
    assert!(err.contains("no listener"), "{err}");
}

#[tokio::test]
async fn rsa_pkcs1_rsa_pkcs8_and_ecdsa_keys_serve_full_chains() {
    let root = Ca::new("root");
    let inter = root.intermediate("intermediate");
    let forms = [KeyForm::RsaPkcs1, KeyForm::RsaPkcs8, KeyForm::EcdsaPkcs8];
    for form in forms {
        let leaf = inter
            .server(&["chain.example.com"], form)
            .with_intermediate(&inter);
        let t = table(&[gateway(&https("l", None, "c")), leaf.secret("c")]);
        let b = bindings(t);
        assert!(b.problems().is_empty(), "{form:?}: {:?}", b.problems());
        // The client trusts only the root: the intermediate must come from the server.
        let client = Arc::new(verifying_client(&root, None));
        let (_, c) = handshake(&b, &client, "chain.example.com")
            .await
            .unwrap_or_else(|e| panic!("{form:?}: {e}"));
        let chain = c.get_ref().1.peer_certificates().expect("chain");
        assert_eq!(chain.len(), 2, "{form:?}");
    }
}

#[tokio::test]
async fn a_key_that_does_not_match_its_certificate_is_a_problem_and_fails_closed() {
    let ca = Ca::new("ca");
    let a = ca.server(&["a.example.com"], KeyForm::EcdsaPkcs8);
    let other = ca.server(&["a.example.com"], KeyForm::EcdsaPkcs8);
    let mixed = Leaf {
        chain: a.chain.clone(),
        key: other.key.clone_key(),
        key_pem: other.key_pem.clone(),
    };
    let t = table(&[gateway(&https("l", None, "c")), mixed.secret("c")]);
    let b = bindings(t);
    assert_eq!(b.problems().len(), 1, "{:?}", b.problems());
    assert!(
        matches!(b.problems()[0].error, TlsBuildError::Key { .. }),
        "{}",
        b.problems()[0]
    );
    let client = Arc::new(any_cert_client(&[]));
    assert!(handshake(&b, &client, "a.example.com").await.is_err());
}

#[tokio::test]
async fn alpn_offers_h2_then_http1_on_https_and_nothing_on_tls_terminate() {
    let ca = Ca::new("ca");
    let leaf = ca.server(&["a.example.com"], KeyForm::EcdsaPkcs8);
    let listeners = format!(
        "{}  - {{name: tcp, protocol: TLS, port: 443, hostname: tcp.example.com, tls: {{mode: Terminate, certificateRefs: [{{name: c}}]}}}}\n",
        https("web", None, "c")
    );
    let t = table(&[gateway(&listeners), leaf.secret("c")]);
    let b = bindings(t);
    assert_eq!(b.get(0).expect("bind").configs().len(), 2, "two policies");
    assert!(b.get(0).expect("bind").server_config().is_none());
    let both = Arc::new(any_cert_client(&[b"h2", b"http/1.1"]));
    let h1 = Arc::new(any_cert_client(&[b"http/1.1"]));
    let (s, _) = handshake(&b, &both, "a.example.com").await.expect("h2");
    assert!(s.is_h2());
    assert_eq!(s.sni(), Some("a.example.com"));
    let (s, _) = handshake(&b, &h1, "a.example.com").await.expect("h1");
    assert_eq!(s.alpn(), Some(&b"http/1.1"[..]));
    let none = Arc::new(any_cert_client(&[]));
    let (s, _) = handshake(&b, &none, "a.example.com")
        .await
        .expect("no alpn");
    assert_eq!(s.alpn(), None);
    let (s, _) = handshake(&b, &none, "tcp.example.com").await.expect("tcp");
    assert_eq!(s.alpn(), None);
}

#[tokio::test]
async fn a_second_handshake_resumes_even_across_a_reload() {
    let ca = Ca::new("ca");
    let leaf = ca.server(&["a.example.com"], KeyForm::EcdsaPkcs8);
    let sessions = SessionResumption::new().expect("ticketer");
    let docs = [gateway(&https("l", None, "c")), leaf.secret("c")];
    let b = TlsBindings::build(table(&docs), &sessions);
    let client = Arc::new(verifying_client(&ca, None));
    let (s, _) = handshake(&b, &client, "a.example.com")
        .await
        .expect("first");
    assert_eq!(kind(&s), Some(HandshakeKind::Full));
    let (s, _) = handshake(&b, &client, "a.example.com")
        .await
        .expect("second");
    assert_eq!(kind(&s), Some(HandshakeKind::Resumed));
    // A reload with a rotated certificate: tickets from before still resume, and a new
    // client gets the new certificate.
    let rotated = ca.server(&["a.example.com"], KeyForm::EcdsaPkcs8);
    let docs = [gateway(&https("l", None, "c")), rotated.secret("c")];
    let reloaded = TlsBindings::build(table(&docs), &sessions);
    let (s, _) = handshake(&reloaded, &client, "a.example.com")
        .await
        .expect("after reload");
    assert_eq!(kind(&s), Some(HandshakeKind::Resumed));
    let fresh = Arc::new(verifying_client(&ca, None));
    let (s, c) = handshake(&reloaded, &fresh, "a.example.com")
        .await
        .expect("new client");
    assert_eq!(kind(&s), Some(HandshakeKind::Full));
    assert_eq!(served_leaf(&c), rotated.chain[0]);
}

#[tokio::test]
async fn tls12_clients_resume_too() {
    let ca = Ca::new("ca");
    let leaf = ca.server(&["a.example.com"], KeyForm::EcdsaPkcs8);
    let b = bindings(table(&[gateway(&https("l", None, "c")), leaf.secret("c")]));
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.clone()).expect("root");
    let client = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("tls12")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let (s, _) = handshake(&b, &client, "a.example.com")
        .await
        .expect("first");
    assert_eq!(
        s.stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let (s, _) = handshake(&b, &client, "a.example.com")
        .await
        .expect("second");
    assert_eq!(kind(&s), Some(HandshakeKind::Resumed));
}

#[tokio::test]
async fn the_resumption_option_off_gives_a_full_handshake_every_time() {
    let ca = Ca::new("ca");
    let leaf = ca.server(&["a.example.com"], KeyForm::EcdsaPkcs8);
    let listener = "  - name: l\n    protocol: HTTPS\n    port: 443\n    tls:\n      certificateRefs: [{name: c}]\n      options: {bench.example.test/tls-session-resumption: \"off\"}\n";
    let b = bindings(table(&[gateway(listener), leaf.secret("c")]));
    assert!(b.problems().is_empty(), "{:?}", b.problems());
    let client = Arc::new(verifying_client(&ca, None));
    for _ in 0..2 {
        let (s, _) = handshake(&b, &client, "a.example.com")
            .await
            .expect("handshake");
        assert_eq!(kind(&s), Some(HandshakeKind::Full));
    }
}

#[test]
fn an_unknown_resumption_option_value_is_reported_and_resumption_stays_on() {
    let ca = Ca::new("ca");
    let leaf = ca.server(&["a.example.com"], KeyForm::EcdsaPkcs8);
    let listener = "  - name: l\n    protocol: HTTPS\n    port: 443\n    tls:\n      certificateRefs: [{name: c}]\n      options: {gateway.networking.example/tls-session-resumption: maybe}\n";
    let b = bindings(table(&[gateway(listener), leaf.secret("c")]));
    assert!(
        matches!(b.problems(), [p] if matches!(p.error, TlsBuildError::BadOption { .. })),
        "{:?}",
        b.problems()
    );
    let config = b.get(0).and_then(BindTls::server_config).expect("config");
    assert!(config.ticketer.enabled());
}

fn frontend(mode: &str) -> String {
    format!("  tls: {{frontend: {{default: {{validation: {{mode: {mode}, caCertificateRefs: [{{group: '', kind: ConfigMap, name: client-ca}}]}}}}}}}}\n")
}

fn ca_config_map(ca: &Ca) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: client-ca, namespace: ns}}\ndata:\n  ca.crt: |\n{}",
        indent(&ca.pem())
    )
}

#[tokio::test]
async fn client_certificates_from_the_ca_are_accepted_and_others_rejected() {
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let other_ca = Ca::new("other ca");
    let leaf = server_ca.server(&["a.example.com"], KeyForm::EcdsaPkcs8);
    let good = client_ca.leaf(
        &["client.test"],
        KeyForm::EcdsaPkcs8,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let bad = other_ca.leaf(
        &["client.test"],
        KeyForm::EcdsaPkcs8,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let docs = [
        gateway_with(&https("l", None, "c"), &frontend("AllowValidOnly")),
        leaf.secret("c"),
        ca_config_map(&client_ca),
    ];
    let b = bindings(table(&docs));
    assert!(b.problems().is_empty(), "{:?}", b.problems());
    let with_good = Arc::new(verifying_client(&server_ca, Some(&good)));
    let (s, _) = handshake(&b, &with_good, "a.example.com")
        .await
        .expect("valid client cert");
    assert!(s.stream.get_ref().1.peer_certificates().is_some());
    let with_bad = Arc::new(verifying_client(&server_ca, Some(&bad)));
    let err = handshake(&b, &with_bad, "a.example.com")
        .await
        .expect_err("rejected");
    assert!(err.contains("server"), "{err}");
    let without = Arc::new(verifying_client(&server_ca, None));
    assert!(handshake(&b, &without, "a.example.com").await.is_err());
}

#[tokio::test]
async fn insecure_fallback_accepts_any_or_no_client_certificate() {
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let other_ca = Ca::new("other ca");
    let leaf = server_ca.server(&["a.example.com"], KeyForm::EcdsaPkcs8);
    let bad = other_ca.leaf(
        &["client.test"],
        KeyForm::EcdsaPkcs8,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let docs = [
        gateway_with(&https("l", None, "c"), &frontend("AllowInsecureFallback")),
        leaf.secret("c"),
        ca_config_map(&client_ca),
    ];
    let b = bindings(table(&docs));
    assert!(b.problems().is_empty(), "{:?}", b.problems());
    for client in [Some(&bad), None] {
        let c = Arc::new(verifying_client(&server_ca, client));
        assert!(handshake(&b, &c, "a.example.com").await.is_ok());
    }
}

#[tokio::test]
async fn a_ticket_from_an_open_listener_does_not_resume_where_client_certificates_are_required() {
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let leaf = server_ca.server(&["a.example.com"], KeyForm::EcdsaPkcs8);
    let good = client_ca.leaf(
        &["client.test"],
        KeyForm::EcdsaPkcs8,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let sessions = SessionResumption::new().expect("ticketer");
    let open = TlsBindings::build(
        table(&[gateway(&https("l", None, "c")), leaf.secret("c")]),
        &sessions,
    );
    let mtls = TlsBindings::build(
        table(&[
            gateway_with(&https("l", None, "c"), &frontend("AllowValidOnly")),
            leaf.secret("c"),
            ca_config_map(&client_ca),
        ]),
        &sessions,
    );
    // Without a client certificate: a ticket from the open config must not let this
    // client into the mTLS one.
    let anonymous = Arc::new(verifying_client(&server_ca, None));
    handshake(&open, &anonymous, "a.example.com")
        .await
        .expect("open");
    assert!(handshake(&mtls, &anonymous, "a.example.com").await.is_err());
    // With one: full handshake (new scope), then resumption within the scope.
    let authed = Arc::new(verifying_client(&server_ca, Some(&good)));
    handshake(&open, &authed, "a.example.com")
        .await
        .expect("open");
    let (s, _) = handshake(&mtls, &authed, "a.example.com")
        .await
        .expect("mtls");
    assert_eq!(kind(&s), Some(HandshakeKind::Full));
    let (s, _) = handshake(&mtls, &authed, "a.example.com")
        .await
        .expect("mtls again");
    assert_eq!(kind(&s), Some(HandshakeKind::Resumed));
}

#[tokio::test]
async fn a_silent_or_stalled_client_times_out() {
    let ca = Ca::new("ca");
    let leaf = ca.server(&["a.example.com"], KeyForm::EcdsaPkcs8);
    let b = bindings(table(&[gateway(&https("l", None, "c")), leaf.secret("c")]));
    let (_client, server) = tokio::io::duplex(4096);
    let err = accept(&b, 0, server, Duration::from_millis(50)).await.err();
    assert!(
        matches!(err, Some(HandshakeError::HandshakeTimeout { .. })),
        "{err:?}"
    );
    // Half a ClientHello, then nothing.
    let (mut client, server) = tokio::io::duplex(4096);
    client
        .write_all(&[22, 3, 1, 0, 200, 1, 0, 0, 196])
        .await
        .expect("write");
    let err = accept(&b, 0, server, Duration::from_millis(50)).await.err();
    assert!(
        matches!(err, Some(HandshakeError::HandshakeTimeout { .. })),
        "{err:?}"
    );
    // The plain-acceptor helper has the same timeout.
    let config = b
        .get(0)
        .and_then(BindTls::server_config)
        .expect("config")
        .clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (_client, server) = tokio::io::duplex(4096);
    let err = accept_with_timeout(&acceptor, server, Duration::from_millis(50))
        .await
        .err();
    assert!(
        matches!(err, Some(HandshakeError::HandshakeTimeout { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_plain_acceptor_on_the_bind_config_also_picks_by_sni() {
    let ca = Ca::new("ca");
    let any = ca.server(&["any.test"], KeyForm::EcdsaPkcs8);
    let foo = ca.server(&["foo.example.com"], KeyForm::RsaPkcs8);
    let listeners = format!(
        "{}{}",
        https("any", None, "any"),
        https("foo", Some("foo.example.com"), "foo")
    );
    let b = bindings(table(&[
        gateway(&listeners),
        any.secret("any"),
        foo.secret("foo"),
    ]));
    let acceptor = tokio_rustls::TlsAcceptor::from(
        b.get(0)
            .and_then(BindTls::server_config)
            .expect("one config")
            .clone(),
    );
    let client = TlsConnector::from(Arc::new(any_cert_client(&[])));
    for (sni, want) in [("foo.example.com", &foo), ("x.test", &any)] {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(sni.to_string()).expect("name");
        let (server, client) = tokio::join!(
            accept_with_timeout(&acceptor, s, HANDSHAKE_TIMEOUT),
            client.connect(name, c)
        );
        server.expect("server");
        assert_eq!(served_leaf(&client.expect("client")), want.chain[0]);
    }
}

/// Gateway API conformance HTTPRouteHTTPSListenerDetectMisdirectedRequests: one Gateway,
/// four HTTPS listeners on one port (none, `second-example.org`, `*.wildcard.org`,
/// `fourth-example.wildcard.org`), four routes. 421 exactly when the Host selects
/// another listener than the SNI did; otherwise the route decides (200 or 404).
#[test]
fn misdirected_requests_follow_the_conformance_table() {
    let ca = Ca::new("ca");
    let leaf = ca.server(&["example.org"], KeyForm::EcdsaPkcs8);
    let listeners = [
        https("https", None, "c"),
        https("https-with-hostname", Some("second-example.org"), "c"),
        https("https-with-wildcard-hostname", Some("*.wildcard.org"), "c"),
        https(
            "https-with-hostname-matching-wildcard",
            Some("fourth-example.wildcard.org"),
            "c",
        ),
    ]
    .concat();
    let mut docs = vec![gateway(&listeners), leaf.secret("c")];
    for v in ["v1", "v2", "v3"] {
        docs.push(format!("apiVersion: v1\nkind: Service\nmetadata: {{name: infra-backend-{v}, namespace: ns}}\nspec: {{ports: [{{port: 8080}}]}}"));
    }
    let route = |name: &str, section: Option<&str>, hostnames: &str, backend: &str| {
        let section = section.map_or(String::new(), |s| format!(", sectionName: {s}"));
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  parentRefs: [{{name: gw{section}}}]\n{hostnames}  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /detect-misdirected-requests}}}}]\n    backendRefs: [{{name: {backend}, port: 8080}}]")
    };
    docs.push(route(
        "test-1",
        None,
        "  hostnames: [example.org]\n",
        "infra-backend-v1",
    ));
    docs.push(route(
        "test-2",
        Some("https-with-hostname"),
        "",
        "infra-backend-v2",
    ));
    docs.push(route(
        "test-3",
        Some("https-with-wildcard-hostname"),
        "",
        "infra-backend-v3",
    ));
    docs.push(route(
        "test-4",
        Some("https-with-hostname-matching-wildcard"),
        "  hostnames: [third-example.wildcard.org, fourth-example.wildcard.org]\n",
        "infra-backend-v1",
    ));
    let t = table(&docs);
    let bind: &Bind = &t.binds()[0];
    // (serverName, host, status, backend)
    let cases: [(&str, &str, u16, &str); 15] = [
        ("example.org", "example.org", 200, "infra-backend-v1"),
        ("example.org", "second-example.org", 421, ""),
        ("example.org", "unknown-example.org", 404, ""),
        (
            "second-example.org",
            "second-example.org",
            200,
            "infra-backend-v2",
        ),
        ("second-example.org", "example.org", 421, ""),
        ("second-example.org", "unknown-example.org", 421, ""),
        (
            "third-example.wildcard.org",
            "third-example.wildcard.org",
            200,
            "infra-backend-v3",
        ),
        (
            "third-example.wildcard.org",
            "fith-example.wildcard.org",
            200,
            "infra-backend-v3",
        ),
        (
            "third-example.wildcard.org",
            "fourth-example.wildcard.org",
            421,
            "",
        ),
        ("third-example.wildcard.org", "second-example.org", 421, ""),
        ("third-example.wildcard.org", "unknown-example.org", 421, ""),
        (
            "fourth-example.wildcard.org",
            "fourth-example.wildcard.org",
            200,
            "infra-backend-v1",
        ),
        (
            "fourth-example.wildcard.org",
            "fith-example.wildcard.org",
            421,
            "",
        ),
        (
            "unknown-example.org",
            "example.org",
            200,
            "infra-backend-v1",
        ),
        ("unknown-example.org", "unknown-example.org", 404, ""),
    ];
    for (i, (sni, host, status, backend)) in cases.into_iter().enumerate() {
        let sni_listener = t.select_listener(bind, Some(sni)).expect("SNI listener").id;
        let got = if is_misdirected(&t, bind, sni_listener, host) {
            (421, String::new())
        } else {
            match t.route_http(
                bind,
                host,
                "GET",
                "/detect-misdirected-requests",
                "",
                |_| None,
            ) {
                Some(m) => (200, m.rule.backends[0].name.name.to_string()),
                None => (404, String::new()),
            }
        };
        assert_eq!(
            got,
            (status, backend.to_string()),
            "case {i}: sni {sni}, host {host}"
        );
        // A port in the Host changes nothing.
        assert_eq!(
            is_misdirected(&t, bind, sni_listener, &format!("{host}:443")),
            status == 421,
            "case {i} with port"
        );
    }
}
