//! Backend TLS (re-encrypt): gatewayd's client handshake to a backend, full without the
//! verify cache, full with a verify-cache hit, and resumed.
//!
//! In memory (rustls client and server exchanging bytes through buffers, no sockets),
//! with the client config `BackendTlsConfigs` builds for a BackendTLSPolicy profile
//! (`ProfileTls::client_config`, ALPN h2 + http/1.1) and a plain rustls server holding an
//! ECDSA P-256 certificate from a CA generated at start; TLS 1.3, key exchange as the
//! default provider negotiates between two rustls peers. `client` ids time only the
//! client's calls (gatewayd's share); `both` ids time client and server together.
//!
//! - `full_no_cache`: every handshake validates the chain in full (verify cache off).
//! - `full_cache_hit`: the server does not resume, so every handshake is full, but the
//!   chain was validated before: path building and the chain's signatures are skipped;
//!   the handshake signature is still verified.
//! - `resumed`: the server issues tickets; the client offers one every time.

#[path = "common/handshake.rs"]
mod handshake;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use gateway_config::{BackendTlsProfile, ObjectRef, TrustRoots};
use gateway_userspace::backend_tls::{Alpn, BackendTlsConfigs, BackendTlsOptions, ProfileTls};
use gateway_userspace::tls::provider;
use handshake::Side;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};

const HOST: &str = "backend.example.test";

struct Pki {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![HOST.to_string()]).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).expect("cert");
    Pki {
        ca: ca.der().clone(),
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

fn server_config(pki: &Pki, resume: bool) -> Arc<ServerConfig> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .expect("server cert");
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if resume {
        c.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer");
    } else {
        c.session_storage = Arc::new(NoServerSessionStorage {});
        c.send_tls13_tickets = 0;
    }
    Arc::new(c)
}

/// The profile's TLS state as gatewayd builds it, with the given options.
fn profile(pki: &Pki, options: BackendTlsOptions) -> (BackendTlsConfigs, Arc<ProfileTls>) {
    let p = Arc::new(BackendTlsProfile {
        id: 0,
        policy: ObjectRef {
            namespace: "bench".into(),
            name: "policy".into(),
        },
        roots: TrustRoots::Certificates(vec![pki.ca.clone()]),
        hostname: HOST.into(),
        subject_alt_names: vec![],
        client_certificate: None,
    });
    let configs = BackendTlsConfigs::from_profiles(
        std::slice::from_ref(&p),
        &BackendTlsConfigs::empty(options),
    );
    let tls = configs.profile_of(&p).expect("profile").clone();
    (configs, tls)
}

/// One handshake in memory, tickets delivered; returns the time spent in client calls.
fn handshake(
    client: &Arc<ClientConfig>,
    tls: &ProfileTls,
    server: &Arc<ServerConfig>,
) -> (Duration, HandshakeKind) {
    let mut s = ServerConnection::new(server.clone()).expect("server");
    let t = Instant::now();
    let mut c = ClientConnection::new(client.clone(), tls.server_name().clone()).expect("client");
    let client_time = t.elapsed() + handshake::drive(&mut c, &mut s, Side::Client);
    (client_time, c.handshake_kind().expect("handshake done"))
}

fn bench_backend_handshake(c: &mut Criterion) {
    let pki = pki();
    let no_resume = server_config(&pki, false);
    let resume = server_config(&pki, true);
    let (_c0, no_cache) = profile(
        &pki,
        BackendTlsOptions {
            verify_cache_capacity: 0,
            ..BackendTlsOptions::default()
        },
    );
    let (_c1, cached) = profile(&pki, BackendTlsOptions::default());
    let (_c2, resuming) = profile(&pki, BackendTlsOptions::default());

    // What each case really does.
    let cfg = |t: &ProfileTls| t.client_config(Alpn::H2Http1).clone();
    for _ in 0..2 {
        assert_eq!(
            handshake(&cfg(&no_cache), &no_cache, &no_resume).1,
            HandshakeKind::Full
        );
        assert_eq!(
            handshake(&cfg(&cached), &cached, &no_resume).1,
            HandshakeKind::Full
        );
        handshake(&cfg(&resuming), &resuming, &resume);
    }
    assert_eq!(
        handshake(&cfg(&resuming), &resuming, &resume).1,
        HandshakeKind::Resumed
    );
    assert_eq!(no_cache.stats().cache_hits, 0);
    assert_eq!(cached.stats().full_validations, 1);
    assert!(cached.stats().cache_hits >= 1);

    let mut g = c.benchmark_group("backend_tls13_handshake_ecdsa_p256");
    for (id, tls, server) in [
        ("full_no_cache", &no_cache, &no_resume),
        ("full_cache_hit", &cached, &no_resume),
        ("resumed", &resuming, &resume),
    ] {
        let client = cfg(tls);
        g.bench_function(format!("{id}/both"), |b| {
            b.iter(|| handshake(&client, tls, server))
        });
        g.bench_function(format!("{id}/client"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| handshake(&client, tls, server).0).sum())
        });
    }
    g.finish();
    let (hit, none) = (cached.stats(), no_cache.stats());
    eprintln!(
        "backend_tls: cache-hit profile: {} full validations, {} cache hits; \
         no-cache profile: {} full validations",
        hit.full_validations, hit.cache_hits, none.full_validations
    );
}

criterion_group!(benches, bench_backend_handshake);
criterion_main!(benches);
