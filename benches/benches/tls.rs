//! TLS: the ClientHello peek of passthrough ports, and the server handshake of edge
//! listeners, full and resumed.
//!
//! Handshakes run in memory (rustls client and server connections exchanging bytes
//! through buffers, no sockets) with the server config gatewayd builds
//! (`TlsBindings::build` on a compiled table): ECDSA P-256 certificate generated at
//! start, TLS 1.3, X25519 (what wrk/OpenSSL 3.0 clients negotiate in the side-by-side
//! bench). `server` ids time only the server's share of each handshake; `both` ids time
//! client and server together.

use std::hint::black_box;
#[path = "common/handshake.rs"]
mod handshake;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use gateway_config::{compile, parse_str, CompileOptions};
use gateway_userspace::passthrough::{peek_sni, Peek};
use gateway_userspace::tls::{provider, SessionResumption, TlsBindings};
use handshake::Side;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig, ServerConnection,
};

/// A TLS 1.3 ClientHello as rustls writes it, X25519 only (about 250 bytes).
fn client_hello(sni: &str) -> Vec<u8> {
    let mut conn =
        ClientConnection::new(Arc::new(client_config(None, false)), name(sni)).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("hello");
    out
}

/// The same handshake message re-split into records of at most `frag` bytes.
fn fragmented(hello: &[u8], frag: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in hello[5..].chunks(frag) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16::try_from(chunk.len()).expect("chunk").to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn bench_peek(c: &mut Criterion) {
    let hello = client_hello("backend.example.test");
    let frag = fragmented(&hello, 64);
    let mut g = c.benchmark_group("sni_peek");
    g.bench_function("single_record", |b| {
        b.iter(|| {
            let p = peek_sni(black_box(&hello));
            debug_assert!(matches!(p, Peek::Sni(_)));
            p
        })
    });
    g.bench_function("fragmented_64_byte_records", |b| {
        b.iter(|| peek_sni(black_box(&frag)))
    });
    g.bench_function("partial_needs_more", |b| {
        b.iter(|| peek_sni(black_box(&hello[..hello.len() / 2])))
    });
    g.finish();
}

fn name(s: &str) -> ServerName<'static> {
    ServerName::try_from(s.to_string()).expect("server name")
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

struct Pki {
    ca: rustls::pki_types::CertificateDer<'static>,
    server: ServerConfig,
}

/// A CA, an ECDSA P-256 server certificate for `gw.example.test` it signs, and the
/// `ServerConfig` gatewayd builds for an HTTPS listener using it.
fn pki(sessions: &SessionResumption) -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["gw.example.test".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("cert");
    let yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: ns}}\nspec:\n  gatewayClassName: x\n  addresses: [{{value: 127.0.0.1}}]\n  listeners:\n  - {{name: https, protocol: HTTPS, port: 443, tls: {{certificateRefs: [{{name: c}}]}}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: c, namespace: ns}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&cert.pem()),
        indent(&key.serialize_pem())
    );
    let (m, _) = parse_str("bench.yaml", &yaml).expect("manifests");
    let table = compile(&m, &CompileOptions::default()).table;
    let bindings = TlsBindings::build(table, sessions);
    let server = bindings
        .get(0)
        .and_then(|b| b.server_config())
        .expect("server config");
    Pki {
        ca: ca.der().clone(),
        server: (**server).clone(),
    }
}

fn client_config(
    ca: Option<&rustls::pki_types::CertificateDer<'static>>,
    resume: bool,
) -> ClientConfig {
    let mut p = (*provider()).clone();
    p.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut roots = RootCertStore::empty();
    if let Some(ca) = ca {
        roots.add(ca.clone()).expect("root");
    }
    let mut c = ClientConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if !resume {
        c.resumption = Resumption::disabled();
    }
    c
}

/// One handshake, in memory; returns the time spent in server-side calls and the kind.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> (Duration, HandshakeKind) {
    let t = Instant::now();
    let mut s = ServerConnection::new(server.clone()).expect("server");
    let new_server = t.elapsed();
    let mut c = ClientConnection::new(client.clone(), name("gw.example.test")).expect("client");
    let server_time = new_server + handshake::drive(&mut c, &mut s, Side::Server);
    (server_time, s.handshake_kind().expect("handshake done"))
}

fn bench_handshake(c: &mut Criterion) {
    let sessions = SessionResumption::new().expect("ticketer");
    let pki = pki(&sessions);
    let server = Arc::new(pki.server);
    let full_client = Arc::new(client_config(Some(&pki.ca), false));
    let resuming_client = Arc::new(client_config(Some(&pki.ca), true));
    assert_eq!(handshake(&server, &full_client).1, HandshakeKind::Full);
    handshake(&server, &resuming_client);
    assert_eq!(
        handshake(&server, &resuming_client).1,
        HandshakeKind::Resumed
    );

    let mut g = c.benchmark_group("tls13_handshake_ecdsa_p256_x25519");
    for (id, client) in [("full", &full_client), ("resumed", &resuming_client)] {
        g.bench_function(format!("{id}/both"), |b| {
            b.iter(|| handshake(&server, client))
        });
        g.bench_function(format!("{id}/server"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| handshake(&server, client).0).sum())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_peek, bench_handshake);
criterion_main!(benches);
