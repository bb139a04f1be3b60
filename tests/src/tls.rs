//! TLS for the integration tests: a throw-away PKI made with rcgen at run time (CAs,
//! server and client certificates, their Secret and ConfigMap manifests), rustls clients
//! that speak HTTP/1.1 or HTTP/2 to a gateway with a chosen SNI, and raw probes that say
//! how a gateway refused a connection (reset or closed, and whether it sent any byte,
//! e.g. a TLS alert).

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    string::Ia5String, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::{NoServerSessionStorage, WebPkiClientVerifier},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

use crate::{
    echo::runtime,
    scenario::{Reply, Req},
};

/// The provider every test client and backend uses (aws-lc-rs, like gatewayd).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

fn indent(s: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    s.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// A certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate.
    pub cert: CertificateDer<'static>,
    pem: String,
}

/// A certificate chain (leaf first) and its key.
#[derive(Clone)]
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// The chain as PEM.
    pub chain_pem: String,
    /// PKCS#8 PEM of the key.
    pub key_pem: String,
}

impl Ca {
    /// A self-signed CA named `name` (ECDSA P-256).
    pub fn new(name: &str) -> Ca {
        Self::with_validity(name, None)
    }

    /// A self-signed CA valid from January 1st of `from` to January 1st of `until`
    /// (years): an expired CA when `until` is past.
    pub fn valid(name: &str, from: i32, until: i32) -> Ca {
        Self::with_validity(name, Some((from, until)))
    }

    fn with_validity(name: &str, validity: Option<(i32, i32)>) -> Ca {
        let key = KeyPair::generate().expect("invariant: rcgen makes a P-256 key");
        let mut params =
            CertificateParams::new(Vec::<String>::new()).expect("invariant: no names to check");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        if let Some((from, until)) = validity {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(until, 1, 1);
        }
        let cert = params
            .self_signed(&key)
            .expect("invariant: a CA signs itself");
        Ca {
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
            pem: cert.pem(),
        }
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> String {
        self.pem.clone()
    }

    fn leaf(&self, names: &[&str], eku: ExtendedKeyUsagePurpose) -> Leaf {
        let sans: Vec<San<'_>> = names.iter().map(|n| San::Dns(n)).collect();
        self.leaf_with(&sans, eku, None)
    }

    fn leaf_with(
        &self,
        sans: &[San<'_>],
        eku: ExtendedKeyUsagePurpose,
        validity: Option<(i32, i32)>,
    ) -> Leaf {
        let key = KeyPair::generate().expect("invariant: rcgen makes a P-256 key");
        let mut params =
            CertificateParams::new(Vec::<String>::new()).expect("invariant: no names to check");
        params.subject_alt_names = sans
            .iter()
            .map(|san| match san {
                San::Dns(d) => SanType::DnsName(
                    Ia5String::try_from(d.to_string()).expect("invariant: an ASCII DNS name"),
                ),
                San::Uri(u) => SanType::URI(
                    Ia5String::try_from(u.to_string()).expect("invariant: an ASCII URI"),
                ),
            })
            .collect();
        let cn = sans
            .iter()
            .find_map(|s| match s {
                San::Dns(d) => Some(*d),
                San::Uri(_) => None,
            })
            .unwrap_or("uri-only leaf");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![eku];
        if let Some((from, until)) = validity {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(until, 1, 1);
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("invariant: the CA signs");
        Leaf {
            chain: vec![cert.der().clone()],
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key: Arc::new(PrivateKeyDer::Pkcs8(key.serialize_der().into())),
        }
    }

    /// A server certificate for `names` (DNS SANs; wildcards allowed).
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.leaf(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A server certificate with exactly these subject alternative names (DNS and URI).
    pub fn server_sans(&self, sans: &[San<'_>]) -> Leaf {
        self.leaf_with(sans, ExtendedKeyUsagePurpose::ServerAuth, None)
    }

    /// A server certificate for `names` valid from January 1st of `from` to January 1st
    /// of `until` (years): an expired one when `until` is past.
    pub fn server_valid(&self, names: &[&str], from: i32, until: i32) -> Leaf {
        let sans: Vec<San<'_>> = names.iter().map(|n| San::Dns(n)).collect();
        self.leaf_with(
            &sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            Some((from, until)),
        )
    }

    /// A client certificate.
    pub fn client(&self, name: &str) -> Leaf {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A root store holding this CA alone.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert.clone())
            .expect("invariant: rcgen CAs are valid roots");
        roots
    }

    /// A `ConfigMap` holding this CA as `ca.crt`.
    pub fn config_map(&self, ns: &str, name: &str) -> String {
        ca_config_map(ns, name, &[self])
    }
}

/// A subject alternative name of a test certificate.
#[derive(Clone, Copy, Debug)]
pub enum San<'a> {
    /// A DNS name.
    Dns(&'a str),
    /// A URI (e.g. a SPIFFE id).
    Uri(&'a str),
}

/// A `ConfigMap` whose `ca.crt` is the bundle of `cas` (empty: a ConfigMap with a `ca.crt`
/// that holds no certificate).
pub fn ca_config_map(ns: &str, name: &str, cas: &[&Ca]) -> String {
    let bundle: String = cas.iter().map(|c| c.pem()).collect();
    let value = if bundle.is_empty() {
        " \"\"\n".to_string()
    } else {
        format!(" |\n{}", indent(&bundle, 4))
    };
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}}}\ndata:\n  ca.crt:{value}"
    )
}

/// How a test TLS server (a backend) behaves beyond its certificate.
#[derive(Clone, Default)]
pub struct ServerOptions<'a> {
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<&'a [u8]>,
    /// Require a client certificate issued by this CA.
    pub client_ca: Option<&'a Ca>,
    /// Refuse resumption (no session cache, no TLS 1.3 tickets): every handshake is full.
    pub no_resumption: bool,
}

impl Leaf {
    /// A `kubernetes.io/tls` Secret with this chain and key.
    pub fn secret(&self, ns: &str, name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&self.chain_pem, 4),
            indent(&self.key_pem, 4)
        )
    }

    /// A rustls server config serving this chain, with `alpn`.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        self.server_config_with(&ServerOptions {
            alpn: alpn.to_vec(),
            ..ServerOptions::default()
        })
    }

    /// A rustls server config serving this chain as `options` say.
    pub fn server_config_with(&self, options: &ServerOptions<'_>) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("invariant: the default versions are supported");
        let builder = match options.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                    .build()
                    .expect("invariant: one valid root"),
            ),
        };
        let mut c = builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .expect("invariant: the key matches the certificate");
        c.alpn_protocols = options.alpn.iter().map(|p| p.to_vec()).collect();
        if options.no_resumption {
            c.session_storage = Arc::new(NoServerSessionStorage {});
            c.send_tls13_tickets = 0;
        }
        Arc::new(c)
    }

    /// SHA-256 of the leaf certificate, lower-case hex (as [`Echo`](crate::echo::Echo)
    /// reports a client certificate).
    pub fn fingerprint(&self) -> String {
        sha256_hex(self.chain[0].as_ref())
    }
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let hash = provider()
        .cipher_suites
        .iter()
        .find_map(|s| match s {
            rustls::SupportedCipherSuite::Tls13(t)
                if t.common.suite == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 =>
            {
                Some(t.common.hash_provider)
            }
            _ => None,
        })
        .expect("invariant: aws-lc-rs has TLS13_AES_128_GCM_SHA256");
    hash.hash(bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How a test client verifies the server and authenticates itself.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl ClientTls {
    /// Trusts `ca` only; no client certificate; ALPN `h2`, `http/1.1`.
    pub fn new(ca: &Ca) -> ClientTls {
        Self::build(Some(ca), None, &[b"h2", b"http/1.1"])
    }

    /// Trusts `ca`, presents `client`.
    pub fn with_client_cert(ca: &Ca, client: &Leaf) -> ClientTls {
        Self::build(Some(ca), Some(client), &[b"h2", b"http/1.1"])
    }

    /// Accepts any server certificate (to look at the one served, or to talk to a
    /// passthrough backend whose CA the test does not care about).
    pub fn any_server() -> ClientTls {
        Self::build(None, None, &[b"h2", b"http/1.1"])
    }

    /// The same, with these ALPN protocols instead.
    pub fn alpn(&self, alpn: &[&[u8]]) -> ClientTls {
        let mut c = (*self.config).clone();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        ClientTls {
            config: Arc::new(c),
        }
    }

    /// The rustls config.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    fn build(ca: Option<&Ca>, client: Option<&Leaf>, alpn: &[&[u8]]) -> ClientTls {
        let b = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("invariant: the default versions are supported");
        let b = match ca {
            Some(ca) => b.with_root_certificates(ca.roots()),
            None => b
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider()))),
        };
        let mut config = match client {
            None => b.with_no_client_auth(),
            Some(l) => b
                .with_client_auth_cert(l.chain.clone(), l.key.clone_key())
                .expect("invariant: the key matches the certificate"),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        ClientTls {
            config: Arc::new(config),
        }
    }
}

#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

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

/// Connects to `addr` and completes a TLS handshake with SNI `sni` (5 s at most).
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    tls: &ClientTls,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(sni.to_string()).context("SNI")?;
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(tls.config.clone()).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    Ok(stream)
}

/// The handshake outcome alone (blocking): `Ok` with the negotiated ALPN, or the
/// client's error.
pub fn handshake(addr: SocketAddr, sni: &str, tls: &ClientTls) -> anyhow::Result<Option<String>> {
    runtime().block_on(async {
        let mut s = connect(addr, sni, tls).await?;
        // A TLS 1.3 server's refusal of a client certificate arrives after the client
        // considers the handshake done: read once to see it.
        let mut one = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(300), s.read(&mut one)).await;
        if let Ok(Err(e)) = read {
            return Err(e.into());
        }
        Ok(s.get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()))
    })
}

/// The leaf certificate the gateway serves for `sni` (any certificate accepted).
pub fn served_certificate(addr: SocketAddr, sni: &str) -> anyhow::Result<CertificateDer<'static>> {
    runtime().block_on(async {
        let s = connect(addr, sni, &ClientTls::any_server()).await?;
        s.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
            .context("no server certificate")
    })
}

/// Sends `req` over a new TLS connection to `addr` with SNI `sni`: HTTP/2 when `req.h2`
/// (ALPN `h2` only), else HTTP/1.1 (ALPN `http/1.1` only).
pub fn https_send(
    addr: SocketAddr,
    sni: &str,
    tls: &ClientTls,
    req: &Req,
) -> anyhow::Result<Reply> {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(20), async {
            let alpn: &[&[u8]] = if req.h2 { &[b"h2"] } else { &[b"http/1.1"] };
            let stream = connect(addr, sni, &tls.alpn(alpn)).await?;
            let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            if negotiated.as_deref() != Some(alpn[0]) {
                bail!("ALPN: asked for {:?}, got {negotiated:?}", alpn[0]);
            }
            let mut conn = HttpsConn::handshake(stream, req.h2).await?;
            conn.send(req).await
        })
        .await
        .context("request timed out")?
    })
}

/// One client connection over TLS, HTTP/1.1 or HTTP/2, for several requests.
pub enum HttpsConn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl HttpsConn {
    /// Starts the HTTP client on an established TLS stream.
    pub async fn handshake(stream: TlsStream<TcpStream>, h2: bool) -> anyhow::Result<HttpsConn> {
        let io = TokioIo::new(stream);
        if h2 {
            let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await?;
            tokio::spawn(conn);
            Ok(HttpsConn::H2(tx))
        } else {
            let (tx, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(HttpsConn::H1(tx))
        }
    }

    /// Sends one request and reads the whole response.
    pub async fn send(&mut self, req: &Req) -> anyhow::Result<Reply> {
        let host = req.host.clone().unwrap_or_else(|| "localhost".to_string());
        let mut builder = Request::builder().method(req.method.clone());
        builder = match self {
            HttpsConn::H2(_) => builder.uri(format!("https://{host}{}", req.path)),
            HttpsConn::H1(_) => builder.uri(&req.path).header("host", host),
        };
        for (n, v) in &req.headers {
            builder = builder.header(n, v);
        }
        let request = builder.body(Full::new(req.body.clone()))?;
        let resp = match self {
            HttpsConn::H1(tx) => {
                tx.ready().await?;
                tx.send_request(request).await?
            }
            HttpsConn::H2(tx) => {
                tx.ready().await?;
                tx.send_request(request).await?
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let (body, body_error) = match resp.into_body().collect().await {
            Ok(b) => (b.to_bytes(), None),
            Err(e) => (Bytes::new(), Some(e.to_string())),
        };
        Ok(Reply {
            status,
            headers,
            body,
            body_error,
        })
    }
}

/// What a client saw when it sent a ClientHello and waited.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The connection was reset.
    Reset,
    /// The connection was closed (FIN) without a byte.
    Closed,
    /// The server sent bytes (the first few): a ServerHello, or a TLS alert (`21 ...`).
    Answered(Vec<u8>),
    /// Nothing happened within the wait.
    Silent,
}

/// Sends a real ClientHello with SNI `sni` (or none) over raw TCP and reports how the
/// server reacted within `wait`.
pub fn probe_client_hello(addr: SocketAddr, sni: Option<&str>, wait: Duration) -> Refusal {
    let hello = client_hello(sni);
    runtime().block_on(async move {
        let Ok(mut tcp) = TcpStream::connect(addr).await else {
            return Refusal::Reset;
        };
        if tcp.write_all(&hello).await.is_err() {
            return Refusal::Reset;
        }
        read_outcome(&mut tcp, wait).await
    })
}

/// What the peer does next on `tcp`, within `wait`.
pub async fn read_outcome(tcp: &mut TcpStream, wait: Duration) -> Refusal {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(wait, tcp.read(&mut buf)).await {
        Err(_) => Refusal::Silent,
        Ok(Ok(0)) => Refusal::Closed,
        Ok(Ok(n)) => Refusal::Answered(buf[..n].to_vec()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => Refusal::Reset,
        Ok(Err(_)) => Refusal::Reset,
    }
}

/// The bytes of a rustls ClientHello (with SNI `sni`, or without when `None` or an IP).
pub fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut config = ClientTls::any_server().config.as_ref().clone();
    let name = match sni {
        Some(s) => ServerName::try_from(s.to_string()).expect("invariant: a valid name"),
        None => {
            config.enable_sni = false;
            ServerName::try_from("gateway.invalid".to_string()).expect("invariant: a valid name")
        }
    };
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)
        .expect("invariant: the client config is complete");
    let mut out = Vec::new();
    conn.write_tls(&mut out)
        .expect("invariant: writing to a Vec cannot fail");
    out
}
