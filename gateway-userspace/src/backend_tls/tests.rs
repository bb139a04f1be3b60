//! Backend TLS tests: certificates generated at run time (rcgen), the verifier called
//! directly for the certificate rules, and real rustls servers on loopback for what only
//! a handshake shows (SNI, client certificate, resumption, the verify cache).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_config::{
    BackendTls, BackendTlsProfile, CertifiedKeyDer, ObjectRef, SubjectAltName, TrustRoots,
};
use rcgen::string::Ia5String;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{HandshakeKind, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

// ---------------------------------------------------------------------------------------
// Certificates

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    pem: String,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params
}

impl Ca {
    fn new(name: &str) -> Ca {
        Ca::with_key(ca_params(name), KeyPair::generate().expect("ca key"))
    }

    /// A CA valid only from 2019 to 2021.
    fn expired(name: &str) -> Ca {
        let mut params = ca_params(name);
        params.not_before = date_time_ymd(2019, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
        Ca::with_key(params, KeyPair::generate().expect("ca key"))
    }

    fn with_key(params: CertificateParams, key: KeyPair) -> Ca {
        let cert = params.self_signed(&key).expect("ca cert");
        Ca {
            cert: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, dns: &[&str], uris: &[&str], eku: ExtendedKeyUsagePurpose) -> CertificateParams {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        for u in uris {
            params
                .subject_alt_names
                .push(SanType::URI(Ia5String::try_from(*u).expect("uri")));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, dns.first().copied().unwrap_or("leaf"));
        params.extended_key_usages = vec![eku];
        params
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            chain: vec![cert.der().clone()],
            chain_pem: cert.pem(),
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            key_pem: key.serialize_pem(),
        }
    }

    fn server(&self, dns: &[&str], uris: &[&str]) -> Leaf {
        self.sign(self.leaf(dns, uris, ExtendedKeyUsagePurpose::ServerAuth))
    }

    fn client(&self, name: &str) -> Leaf {
        self.sign(self.leaf(&[name], &[], ExtendedKeyUsagePurpose::ClientAuth))
    }
}

struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    chain_pem: String,
    key: PrivateKeyDer<'static>,
    key_pem: String,
}

impl Leaf {
    fn certified_key_der(&self) -> Arc<CertifiedKeyDer> {
        Arc::new(CertifiedKeyDer {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            source: "infra/client-cert".to_string(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Profiles

fn policy() -> ObjectRef {
    ObjectRef {
        namespace: "infra".into(),
        name: "policy".into(),
    }
}

fn profile(
    id: u32,
    roots: &[&Ca],
    hostname: &str,
    sans: Vec<SubjectAltName>,
    client: Option<&Leaf>,
) -> Arc<BackendTlsProfile> {
    Arc::new(BackendTlsProfile {
        id,
        policy: policy(),
        roots: TrustRoots::Certificates(roots.iter().map(|c| c.cert.clone()).collect()),
        hostname: hostname.into(),
        subject_alt_names: sans,
        client_certificate: client.map(Leaf::certified_key_der),
    })
}

fn dns(h: &str) -> SubjectAltName {
    SubjectAltName::Hostname(h.into())
}

fn uri(u: &str) -> SubjectAltName {
    SubjectAltName::Uri(u.into())
}

/// Configs for one profile, and that profile's TLS state.
fn single(p: Arc<BackendTlsProfile>) -> (BackendTlsConfigs, Arc<BackendTlsProfile>) {
    let configs =
        BackendTlsConfigs::from_profiles(std::slice::from_ref(&p), &BackendTlsConfigs::default());
    (configs, p)
}

fn tls_of(configs: &BackendTlsConfigs, p: &Arc<BackendTlsProfile>) -> Arc<ProfileTls> {
    configs.profile_of(p).expect("profile builds").clone()
}

/// Run the profile's verifier on a presented chain, as rustls would.
fn verify_at(t: &ProfileTls, leaf: &Leaf, now: UnixTime) -> Result<(), VerifyError> {
    let sn = t.server_name().clone();
    match t
        .verifier
        .verify_server_cert(&leaf.chain[0], &leaf.chain[1..], &sn, &[], now)
    {
        Ok(_) => Ok(()),
        Err(e) => Err(verify::verify_error_of(&e)
            .unwrap_or_else(|| panic!("not a VerifyError: {e:?}"))
            .clone()),
    }
}

fn verify(t: &ProfileTls, leaf: &Leaf) -> Result<(), VerifyError> {
    verify_at(t, leaf, UnixTime::now())
}

fn unix(y: i32, m: u8, d: u8) -> UnixTime {
    let secs = date_time_ymd(y, m, d).unix_timestamp();
    UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(secs).expect("after 1970"),
    ))
}

// ---------------------------------------------------------------------------------------
// Names

const HOST: &str = "abc.example.com";
const SPIFFE: &str = "spiffe://abc.example.com/test-identity";

#[test]
fn san_validation_conformance_cases() {
    // BackendTLSPolicySANValidation: the backend's certificate names abc.example.com (DNS)
    // and spiffe://abc.example.com/test-identity (URI); every policy has hostname
    // abc.example.com.
    let ca = Ca::new("conformance CA");
    let backend = ca.server(&[HOST], &[SPIFFE]);
    let cases: Vec<(&str, Vec<SubjectAltName>, bool)> = vec![
        ("san-dns", vec![dns(HOST)], true),
        ("san-dns-mismatch", vec![dns("dce.example.com")], false),
        ("san-uri", vec![uri(SPIFFE)], true),
        (
            "san-uri-mismatch",
            vec![uri("spiffe://def.example.com/test-identity")],
            false,
        ),
        ("multiple-sans", vec![uri(SPIFFE), dns(HOST)], true),
        (
            "multiple-mismatch-sans",
            vec![
                uri("spiffe://def.example.com/test-identity"),
                dns("def.example.com"),
            ],
            false,
        ),
    ];
    for (name, sans, ok) in cases {
        let (configs, p) = single(profile(0, &[&ca], HOST, sans, None));
        let t = tls_of(&configs, &p);
        match (verify(&t, &backend), ok) {
            (Ok(()), true) => {}
            (Err(VerifyError::SanMismatch { wanted, presented }), false) => {
                assert!(!wanted.is_empty(), "{name}");
                assert!(
                    presented.contains(&format!("uri:{SPIFFE}")),
                    "{name}: {presented:?}"
                );
            }
            (got, _) => panic!("{name}: {got:?}"),
        }
    }
}

#[test]
fn san_list_set_means_hostname_is_not_used_for_authentication() {
    let ca = Ca::new("ca");
    // The certificate matches the hostname but none of the SANs: refused.
    let (configs, p) = single(profile(
        0,
        &[&ca],
        HOST,
        vec![dns("other.example.com")],
        None,
    ));
    let t = tls_of(&configs, &p);
    let err = verify(&t, &ca.server(&[HOST], &[])).expect_err("hostname must not authenticate");
    match &err {
        VerifyError::SanMismatch { wanted, presented } => {
            assert_eq!(wanted, &["dns:other.example.com".to_string()]);
            assert_eq!(presented, &[format!("dns:{HOST}")]);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("other.example.com"), "{err}");
    // And the reverse: a SAN match authenticates a certificate that lacks the hostname.
    let (configs, p) = single(profile(
        0,
        &[&ca],
        HOST,
        vec![dns("other.example.com")],
        None,
    ));
    let t = tls_of(&configs, &p);
    verify(&t, &ca.server(&["other.example.com"], &[])).expect("SAN authenticates");
}

#[test]
fn without_sans_the_certificate_must_match_the_hostname() {
    let ca = Ca::new("ca");
    let (configs, p) = single(profile(0, &[&ca], HOST, vec![], None));
    let t = tls_of(&configs, &p);
    verify(&t, &ca.server(&[HOST], &[])).expect("match");
    match verify(&t, &ca.server(&["def.example.com"], &[])) {
        Err(VerifyError::HostnameMismatch {
            hostname,
            presented,
        }) => {
            assert_eq!(hostname, HOST);
            assert_eq!(presented, ["dns:def.example.com"]);
        }
        other => panic!("{other:?}"),
    }
    // A URI SAN naming the host does not stand in for a DNS name.
    assert!(matches!(
        verify(&t, &ca.server(&[], &[SPIFFE])),
        Err(VerifyError::HostnameMismatch { .. })
    ));
}

#[test]
fn wildcards_match_the_left_most_label_only() {
    let ca = Ca::new("ca");
    let wild = ca.server(&["*.example.com"], &[]);
    for (host, ok) in [
        ("abc.example.com", true),
        ("a.b.example.com", false),
        ("example.com", false),
    ] {
        let (configs, p) = single(profile(0, &[&ca], host, vec![], None));
        let t = tls_of(&configs, &p);
        assert_eq!(verify(&t, &wild).is_ok(), ok, "{host}");
        // The same rules for a DNS SAN of the policy.
        let (configs, p) = single(profile(0, &[&ca], "x.test", vec![dns(host)], None));
        let t = tls_of(&configs, &p);
        assert_eq!(verify(&t, &wild).is_ok(), ok, "SAN {host}");
    }
    // A wildcard SAN in the policy asks for a certificate issued for that wildcard.
    let (configs, p) = single(profile(
        0,
        &[&ca],
        "x.test",
        vec![dns("*.Example.com")],
        None,
    ));
    let t = tls_of(&configs, &p);
    verify(&t, &wild).expect("same wildcard");
    assert!(verify(&t, &ca.server(&["abc.example.com"], &[])).is_err());
    // A wildcard that is not the whole left-most label matches nothing.
    let partial = ca.server(&["a*.example.com"], &[]);
    let (configs, p) = single(profile(0, &[&ca], "abc.example.com", vec![], None));
    assert!(verify(&tls_of(&configs, &p), &partial).is_err());
}

#[test]
fn uri_sans_match_exactly() {
    let ca = Ca::new("ca");
    let backend = ca.server(&[], &[SPIFFE]);
    for (want, ok) in [
        (SPIFFE, true),
        ("spiffe://abc.example.com/test-identity/", false),
        ("SPIFFE://abc.example.com/test-identity", false),
        ("spiffe://abc.example.com/", false),
    ] {
        let (configs, p) = single(profile(0, &[&ca], HOST, vec![uri(want)], None));
        assert_eq!(
            verify(&tls_of(&configs, &p), &backend).is_ok(),
            ok,
            "{want}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Chains and dates

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let ca = Ca::new("ours");
    let impostor = Ca::new("theirs").server(&[HOST], &[]);
    let (configs, p) = single(profile(0, &[&ca], HOST, vec![], None));
    let err = verify(&tls_of(&configs, &p), &impostor).expect_err("other CA");
    assert!(
        matches!(
            err,
            VerifyError::UntrustedChain {
                source: webpki::Error::UnknownIssuer
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("not trusted"), "{err}");
}

#[test]
fn an_expired_leaf_is_refused_and_says_when_it_expired() {
    let ca = Ca::new("ca");
    let mut params = ca.leaf(&[HOST], &[], ExtendedKeyUsagePurpose::ServerAuth);
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2021, 1, 1);
    let old = ca.sign(params);
    let (configs, p) = single(profile(0, &[&ca], HOST, vec![], None));
    let t = tls_of(&configs, &p);
    match verify(&t, &old) {
        Err(VerifyError::Expired { subject, not_after }) => {
            assert!(subject.contains(HOST), "{subject}");
            assert!(not_after.contains("2021"), "{not_after}");
        }
        other => panic!("{other:?}"),
    }
    // Within its dates it was fine.
    verify_at(&t, &old, unix(2020, 6, 1)).expect("valid in 2020");
    match verify_at(&t, &old, unix(2019, 6, 1)) {
        Err(VerifyError::NotYetValid { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_leaf_on_an_expired_intermediate_is_refused() {
    let root = Ca::new("root");
    let mut params = ca_params("intermediate");
    params.not_before = date_time_ymd(2019, 1, 1);
    params.not_after = date_time_ymd(2021, 1, 1);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &root.issuer).expect("intermediate");
    let inter = Ca {
        cert: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    };
    let mut leaf = inter.server(&[HOST], &[]);
    leaf.chain.push(inter.cert.clone());
    let (configs, p) = single(profile(0, &[&root], HOST, vec![], None));
    match verify(&tls_of(&configs, &p), &leaf) {
        Err(VerifyError::Expired { subject, .. }) => {
            assert!(subject.contains("intermediate"), "{subject}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn webpki_alone_accepts_a_chain_to_an_expired_ca() {
    // Why we check the CA's dates ourselves: rustls-webpki keeps only a trust anchor's
    // subject, key and name constraints (RFC 5280 §6.1.1), so it never sees the dates.
    let ca = Ca::expired("expired CA");
    let leaf = ca.server(&[HOST], &[]);
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.clone()).expect("root");
    let plain = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        crate::tls::provider(),
    )
    .build()
    .expect("verifier");
    plain
        .verify_server_cert(
            &leaf.chain[0],
            &[],
            &ServerName::try_from(HOST).expect("name"),
            &[],
            UnixTime::now(),
        )
        .expect("webpki does not look at the CA's dates");
}

#[test]
fn an_expired_ca_in_the_bundle_is_not_a_trust_anchor() {
    let expired = Ca::expired("expired CA");
    let leaf = expired.server(&[HOST], &[]);
    let (configs, p) = single(profile(0, &[&expired], HOST, vec![], None));
    let t = tls_of(&configs, &p);
    match verify(&t, &leaf) {
        Err(e @ VerifyError::CaExpired { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("expired CA") && msg.contains("2021"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    // While the CA was valid, its chains were.
    verify_at(&t, &leaf, unix(2020, 1, 1)).expect("valid in 2020");

    // A valid CA next to it still works for its own chains, and does not rescue the
    // expired CA's.
    let good = Ca::new("good CA");
    let (configs, p) = single(profile(0, &[&expired, &good], HOST, vec![], None));
    let t = tls_of(&configs, &p);
    verify(&t, &good.server(&[HOST], &[])).expect("valid CA");
    assert!(matches!(
        verify(&t, &leaf),
        Err(VerifyError::CaExpired { .. })
    ));
}

#[test]
fn a_renewed_ca_with_the_same_key_keeps_its_chains_valid() {
    // The usual CA renewal: same subject and key, new dates. Both in the bundle: the
    // path through the expired one is refused and webpki goes on to the renewed one.
    let key_pem = KeyPair::generate().expect("key").serialize_pem();
    let mut old_params = ca_params("renewed CA");
    old_params.not_before = date_time_ymd(2019, 1, 1);
    old_params.not_after = date_time_ymd(2021, 1, 1);
    let old = Ca::with_key(old_params, KeyPair::from_pem(&key_pem).expect("key"));
    let new = Ca::with_key(
        ca_params("renewed CA"),
        KeyPair::from_pem(&key_pem).expect("key"),
    );
    let leaf = old.server(&[HOST], &[]);
    let (configs, p) = single(profile(0, &[&old, &new], HOST, vec![], None));
    verify(&tls_of(&configs, &p), &leaf).expect("renewed CA anchors the chain");
}

#[test]
fn a_cached_chain_is_validated_again_after_its_earliest_not_after() {
    let ca = Ca::new("ca");
    let mut params = ca.leaf(&[HOST], &[], ExtendedKeyUsagePurpose::ServerAuth);
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2030, 1, 1);
    let leaf = ca.sign(params);
    let (configs, p) = single(profile(0, &[&ca], HOST, vec![], None));
    let t = tls_of(&configs, &p);
    let at = unix(2029, 12, 31);
    verify_at(&t, &leaf, at).expect("valid");
    verify_at(&t, &leaf, at).expect("cached");
    assert_eq!((t.stats().full_validations, t.stats().cache_hits), (1, 1));
    // Past notAfter (well within the TTL of the entry's insertion): full validation.
    let after = unix(2030, 1, 2);
    assert!(matches!(
        verify_at(&t, &leaf, after),
        Err(VerifyError::Expired { .. })
    ));
    assert_eq!(t.stats().full_validations, 2);
}

#[test]
fn a_cached_chain_is_validated_again_after_the_ttl() {
    let ca = Ca::new("ca");
    let leaf = ca.server(&[HOST], &[]);
    let (configs, p) = single(profile(0, &[&ca], HOST, vec![], None));
    let t = tls_of(&configs, &p);
    let now = UnixTime::now();
    let later = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() + 601));
    verify_at(&t, &leaf, now).expect("valid");
    verify_at(&t, &leaf, now).expect("cached");
    verify_at(&t, &leaf, later).expect("valid again");
    assert_eq!((t.stats().full_validations, t.stats().cache_hits), (2, 1));
}

#[test]
fn a_failed_chain_is_never_cached() {
    let ca = Ca::new("ca");
    let (configs, p) = single(profile(0, &[&ca], HOST, vec![], None));
    let t = tls_of(&configs, &p);
    let wrong = ca.server(&["nope.example.com"], &[]);
    for _ in 0..2 {
        assert!(verify(&t, &wrong).is_err());
    }
    let s = t.stats();
    assert_eq!(
        (s.full_validations, s.cache_hits, s.verify_failures),
        (2, 0, 2)
    );
    assert_eq!(t.cached_chains(), 0);
}

// ---------------------------------------------------------------------------------------
// Building

#[test]
fn invalid_policies_and_unusable_profiles_fail_closed() {
    let configs = BackendTlsConfigs::default();
    assert!(matches!(
        configs.resolve(&BackendTls::Invalid),
        Err(BackendTlsError::InvalidPolicy)
    ));
    assert!(matches!(configs.resolve(&BackendTls::None), Ok(None)));

    // A CA list with nothing usable.
    let junk = Arc::new(BackendTlsProfile {
        id: 0,
        policy: policy(),
        roots: TrustRoots::Certificates(vec![CertificateDer::from(b"junk".to_vec())]),
        hostname: HOST.into(),
        subject_alt_names: vec![],
        client_certificate: None,
    });
    let configs = BackendTlsConfigs::from_profiles(std::slice::from_ref(&junk), &configs);
    match configs.resolve(&BackendTls::Profile(junk.clone())) {
        Err(e @ BackendTlsError::Unavailable { .. }) => {
            assert!(e.to_string().contains("infra/policy"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(configs.problems().count(), 1);

    // A profile these configs were not built from (another table): refused, not guessed.
    let ca = Ca::new("ca");
    let other = profile(0, &[&ca], HOST, vec![], None);
    assert!(matches!(
        configs.resolve(&BackendTls::Profile(other)),
        Err(BackendTlsError::StaleProfile { .. })
    ));

    // A client key rustls cannot use.
    let mut bad_client = ca.client("gateway");
    bad_client.key = PrivateKeyDer::Pkcs8(b"not a key".to_vec().into());
    let p = profile(0, &[&ca], HOST, vec![], Some(&bad_client));
    let configs = BackendTlsConfigs::from_profiles(std::slice::from_ref(&p), &configs);
    assert!(matches!(
        configs.profile_of(&p),
        Err(BackendTlsError::Unavailable {
            source: ProfileBuildError::ClientCertificate { .. },
            ..
        })
    ));
}

/// TLS to a backend over a connected socket as the data path does it (resolve, then
/// [`ProfileTls::connect`]), failing closed: [`BackendTls::Invalid`],
/// a profile that could not be built or is not from `configs`' table, and
/// [`BackendTls::None`] (the caller should not ask) are errors, never a plaintext
/// stream. The session store is the peer address's.
async fn connect(
    configs: &BackendTlsConfigs,
    tls: &BackendTls,
    alpn: Alpn,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, BackendTlsError> {
    let profile = configs
        .resolve(tls)?
        .ok_or(BackendTlsError::NotConfigured)?;
    let endpoint = tcp.peer_addr().ok();
    profile.connect(tcp, endpoint, alpn, timeout).await
}

#[tokio::test]
async fn connect_refuses_invalid_and_plain_backends_without_touching_the_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let configs = BackendTlsConfigs::default();
    for tls in [BackendTls::Invalid, BackendTls::None] {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut accepted, _) = listener.accept().await.expect("accept");
        let err = connect(&configs, &tls, Alpn::Http1, tcp, HANDSHAKE_TIMEOUT)
            .await
            .expect_err("fail closed");
        assert!(matches!(
            err,
            BackendTlsError::InvalidPolicy | BackendTlsError::NotConfigured
        ));
        // Nothing was sent: the socket was closed without a byte.
        let mut buf = Vec::new();
        accepted.read_to_end(&mut buf).await.expect("read");
        assert!(buf.is_empty(), "{tls:?} sent {buf:?}");
    }
}

#[test]
fn identical_profiles_share_one_config_and_survive_a_reload() {
    let ca = Ca::new("ca");
    let client = ca.client("gw");
    let a = profile(0, &[&ca], HOST, vec![], Some(&client));
    let b = profile(1, &[&ca], HOST, vec![], Some(&client));
    let c = profile(2, &[&ca], "other.example.com", vec![], Some(&client));
    let first = BackendTlsConfigs::from_profiles(
        &[a.clone(), b.clone(), c.clone()],
        &BackendTlsConfigs::default(),
    );
    let (ta, tb, tc) = (tls_of(&first, &a), tls_of(&first, &b), tls_of(&first, &c));
    assert!(Arc::ptr_eq(&ta, &tb), "same content, same state");
    assert!(!Arc::ptr_eq(&ta, &tc));
    assert!(Arc::ptr_eq(
        ta.client_config(Alpn::Http1),
        tb.client_config(Alpn::Http1)
    ));

    // A new table with the same content (new Arcs, other ids): same state, same identity.
    let a2 = profile(0, &[&ca], HOST, vec![], Some(&client));
    let second = BackendTlsConfigs::from_profiles(std::slice::from_ref(&a2), &first);
    let ta2 = tls_of(&second, &a2);
    assert!(Arc::ptr_eq(&ta, &ta2));
    assert!(second.is_current(ta.identity()));
    assert!(!second.is_current(tc.identity()), "profile c is gone");

    // Another client certificate: another config (a pool must not mix them).
    let a3 = profile(0, &[&ca], HOST, vec![], Some(&ca.client("gw2")));
    let third = BackendTlsConfigs::from_profiles(std::slice::from_ref(&a3), &second);
    assert_ne!(tls_of(&third, &a3).identity(), ta.identity());
}

#[test]
fn configs_are_built_from_a_compiled_table() {
    let ca = Ca::new("table CA");
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let yaml = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: infra}}
spec:
  gatewayClassName: gatewayd
  listeners: [{{name: http, protocol: HTTP, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: infra}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: secure, port: 443}}]
  - matches: [{{path: {{value: /bad}}}}]
    backendRefs: [{{name: broken, port: 443}}]
---
apiVersion: v1
kind: Service
metadata: {{name: secure, namespace: infra}}
spec: {{ports: [{{name: https, port: 443}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: broken, namespace: infra}}
spec: {{ports: [{{name: https, port: 443}}]}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: ca, namespace: infra}}
data:
  ca.crt: |
{ca_pem}---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: secure, namespace: infra}}
spec:
  targetRefs: [{{group: '', kind: Service, name: secure}}]
  validation:
    caCertificateRefs: [{{group: '', kind: ConfigMap, name: ca}}]
    hostname: {HOST}
    subjectAltNames: [{{type: URI, uri: "{SPIFFE}"}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: broken, namespace: infra}}
spec:
  targetRefs: [{{group: '', kind: Service, name: broken}}]
  validation:
    caCertificateRefs: [{{group: '', kind: ConfigMap, name: missing}}]
    hostname: {HOST}
"#,
        ca_pem = indent(&ca.pem)
    );
    let (m, _) = gateway_config::parse_str("t.yaml", &yaml).expect("parse");
    let compiled = gateway_config::compile(&m, &gateway_config::CompileOptions::default());
    let table = &compiled.table;
    assert_eq!(table.backend_tls_profiles().len(), 1);
    let configs = BackendTlsConfigs::build(table, &BackendTlsConfigs::default());
    let bind = &table.binds()[0];
    let tls_for = |path: &str| {
        let m = table
            .route_http(bind, "h", "GET", path, "", |_| None)
            .expect("route");
        m.rule.backends[0].tls.clone()
    };
    let t = configs
        .resolve(&tls_for("/"))
        .expect("valid policy")
        .expect("TLS");
    assert_eq!(t.server_name(), &ServerName::try_from(HOST).expect("name"));
    verify(t, &ca.server(&["unrelated.test"], &[SPIFFE])).expect("URI SAN authenticates");
    assert!(matches!(
        configs.resolve(&tls_for("/bad")),
        Err(BackendTlsError::InvalidPolicy)
    ));
}

// ---------------------------------------------------------------------------------------
// Handshakes with real servers

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[derive(Clone, Debug, Default)]
struct Seen {
    sni: Option<String>,
    client_cert: bool,
    resumed: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Resume {
    /// No tickets, no session cache: every handshake is full.
    #[default]
    Off,
    /// Stateless tickets (TLS 1.3 and 1.2) and the session cache.
    Tickets,
    /// The session cache only: TLS 1.2 session ids, TLS 1.3 stateful tickets.
    Stateful,
}

#[derive(Default)]
struct ServerOpts {
    resumption: Resume,
    tls12_only: bool,
    client_ca: Option<CertificateDer<'static>>,
    alpn: Vec<Vec<u8>>,
    /// Sign handshakes with this key instead of the certificate's (an impostor that
    /// copied a real backend's certificate).
    wrong_key: Option<PrivateKeyDer<'static>>,
    /// Accept TCP and never answer.
    silent: bool,
}

struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

async fn backend(leaf: &Leaf, opts: ServerOpts) -> Backend {
    let provider = crate::tls::provider();
    let key = opts.wrong_key.as_ref().unwrap_or(&leaf.key).clone_key();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .expect("server key");
    let certified = Arc::new(CertifiedKey::new(leaf.chain.clone(), signing));
    let versions: &[&rustls::SupportedProtocolVersion] = if opts.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        crate::tls::PROTOCOL_VERSIONS
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("versions");
    let builder = match &opts.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone()).expect("client CA");
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .expect("client verifier"),
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Fixed(certified)));
    config.alpn_protocols = opts.alpn.clone();
    match opts.resumption {
        Resume::Tickets => {
            config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer")
        }
        Resume::Stateful => {}
        Resume::Off => {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let silent = opts.silent;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if silent {
                held.push(tcp);
                continue;
            }
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let conn = tls.get_ref().1;
                record.lock().expect("seen").push(Seen {
                    sni: conn.server_name().map(str::to_string),
                    client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                    resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
                });
                let _ = tls.write_all(b"ok").await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Backend { addr, seen }
}

/// One connection through the profile; reads the backend's "ok" to the end, so session
/// tickets sent after the handshake are stored.
async fn dial(t: &ProfileTls, b: &Backend, alpn: Alpn) -> Result<Negotiated, BackendTlsError> {
    let tcp = TcpStream::connect(b.addr).await.expect("tcp");
    let mut tls = t
        .connect(tcp, Some(b.addr), alpn, Duration::from_secs(5))
        .await?;
    let proto = negotiated(&tls);
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.expect("read");
    assert_eq!(buf, b"ok");
    Ok(proto)
}

#[tokio::test]
async fn the_backend_sees_the_policy_hostname_as_sni() {
    let ca = Ca::new("ca");
    let b = backend(&ca.server(&[HOST], &[]), ServerOpts::default()).await;
    let (configs, p) = single(profile(0, &[&ca], HOST, vec![], None));
    // Through the table-facing entry point, over the TcpStream.
    let tcp = TcpStream::connect(b.addr).await.expect("tcp");
    let mut tls = connect(
        &configs,
        &BackendTls::Profile(p),
        Alpn::Http1,
        tcp,
        HANDSHAKE_TIMEOUT,
    )
    .await
    .expect("handshake");
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.expect("read");
    let seen = b.seen();
    assert_eq!(seen[0].sni.as_deref(), Some(HOST));
    assert!(!seen[0].client_cert, "no client certificate configured");
}

#[tokio::test]
async fn handshake_failures_say_which_check_failed() {
    let ca = Ca::new("ca");
    let wrong_name = backend(&ca.server(&["def.example.com"], &[]), ServerOpts::default()).await;
    let other_ca = backend(
        &Ca::new("other").server(&[HOST], &[]),
        ServerOpts::default(),
    )
    .await;
    let (configs, p) = single(profile(0, &[&ca], HOST, vec![], None));
    let t = tls_of(&configs, &p);
    match dial(&t, &wrong_name, Alpn::Http1).await {
        Err(
            e @ BackendTlsError::Verify {
                source: VerifyError::HostnameMismatch { .. },
            },
        ) => {
            let msg = e.to_string();
            assert!(
                msg.contains(HOST) && msg.contains("def.example.com"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        dial(&t, &other_ca, Alpn::Http1).await,
        Err(BackendTlsError::Verify {
            source: VerifyError::UntrustedChain { .. }
        })
    ));
    let s = t.stats();
    assert_eq!(
        (s.handshakes, s.handshake_failures, s.verify_failures),
        (0, 2, 2)
    );
}

#[tokio::test]
async fn the_client_certificate_is_presented_to_the_backend() {
    let ca = Ca::new("ca");
    let clients = Ca::new("client CA");
    let b = backend(
        &ca.server(&[HOST], &[]),
        ServerOpts {
            client_ca: Some(clients.cert.clone()),
            ..ServerOpts::default()
        },
    )
    .await;
    let gw = clients.client("gateway");
    let with = profile(0, &[&ca], HOST, vec![], Some(&gw));
    let without = profile(1, &[&ca], HOST, vec![], None);
    let configs = BackendTlsConfigs::from_profiles(
        &[with.clone(), without.clone()],
        &BackendTlsConfigs::default(),
    );
    dial(&tls_of(&configs, &with), &b, Alpn::Http1)
        .await
        .expect("mTLS");
    dial(&tls_of(&configs, &without), &b, Alpn::Http1)
        .await
        .expect("no client cert");
    let seen = b.seen();
    assert!(seen[0].client_cert, "{seen:?}");
    assert!(!seen[1].client_cert, "{seen:?}");
}

#[tokio::test]
async fn the_second_connection_resumes() {
    let ca = Ca::new("ca");
    let leaf = ca.server(&[HOST], &[]);
    for (tls12_only, resumption) in [
        (false, Resume::Tickets),
        (false, Resume::Stateful),
        (true, Resume::Tickets),
        (true, Resume::Stateful),
    ] {
        let b = backend(
            &leaf,
            ServerOpts {
                resumption,
                tls12_only,
                ..ServerOpts::default()
            },
        )
        .await;
        let (configs, p) = single(profile(0, &[&ca], HOST, vec![], None));
        let t = tls_of(&configs, &p);
        dial(&t, &b, Alpn::Http1).await.expect("first");
        dial(&t, &b, Alpn::Http1).await.expect("second");
        let seen = b.seen();
        assert!(
            !seen[0].resumed && seen[1].resumed,
            "tls12_only={tls12_only} {resumption:?}: {seen:?}"
        );
        let s = t.stats();
        assert_eq!(
            (s.handshakes, s.resumed),
            (2, 1),
            "tls12_only={tls12_only} {resumption:?}"
        );
        assert_eq!(
            s.full_validations, 1,
            "a resumed handshake sees no certificate"
        );
        // The other ALPN offer shares the endpoint's store.
        dial(&t, &b, Alpn::H2Http1).await.expect("third");
        assert_eq!(
            t.stats().resumed,
            2,
            "tls12_only={tls12_only} {resumption:?}"
        );
    }
}

#[tokio::test]
async fn sessions_are_kept_per_endpoint() {
    // Two endpoints of one Service with their own ticket keys: alternating between them,
    // each resumes its own sessions (one store per profile would offer A's ticket to B).
    let ca = Ca::new("ca");
    let leaf = ca.server(&[HOST], &[]);
    let opts = || ServerOpts {
        resumption: Resume::Tickets,
        ..ServerOpts::default()
    };
    let (a, b) = (backend(&leaf, opts()).await, backend(&leaf, opts()).await);
    let (configs, p) = single(profile(0, &[&ca], HOST, vec![], None));
    let t = tls_of(&configs, &p);
    for _ in 0..3 {
        dial(&t, &a, Alpn::Http1).await.expect("a");
        dial(&t, &b, Alpn::Http1).await.expect("b");
    }
    let s = t.stats();
    assert_eq!((s.handshakes, s.resumed), (6, 4), "{s:?}");
    assert_eq!(
        s.full_validations + s.cache_hits,
        2,
        "one certificate per endpoint"
    );
}

#[tokio::test]
async fn a_repeated_chain_hits_the_verify_cache() {
    let ca = Ca::new("ca");
    let b = backend(&ca.server(&[HOST], &[SPIFFE]), ServerOpts::default()).await;
    let (configs, p) = single(profile(0, &[&ca], HOST, vec![uri(SPIFFE)], None));
    let t = tls_of(&configs, &p);
    for _ in 0..3 {
        dial(&t, &b, Alpn::Http1).await.expect("handshake");
    }
    let s = t.stats();
    assert_eq!(
        (s.handshakes, s.resumed, s.full_validations, s.cache_hits),
        (3, 0, 1, 2),
        "{s:?}"
    );
    assert_eq!(configs.totals().cache_hits, 2);
}

#[tokio::test]
async fn a_cache_hit_still_verifies_the_handshake_signature() {
    // An impostor replays a real backend's certificate without its key: the chain is in
    // the cache, the signature over the handshake is not, and the handshake fails.
    let ca = Ca::new("ca");
    let leaf = ca.server(&[HOST], &[]);
    let real = backend(&leaf, ServerOpts::default()).await;
    let stolen = backend(
        &leaf,
        ServerOpts {
            wrong_key: Some(ca.server(&[HOST], &[]).key),
            ..ServerOpts::default()
        },
    )
    .await;
    let (configs, p) = single(profile(0, &[&ca], HOST, vec![], None));
    let t = tls_of(&configs, &p);
    dial(&t, &real, Alpn::Http1).await.expect("real");
    let err = dial(&t, &stolen, Alpn::Http1)
        .await
        .expect_err("no key, no handshake");
    assert!(matches!(err, BackendTlsError::Handshake { .. }), "{err:?}");
    assert_eq!(t.stats().cache_hits, 1, "the chain itself was a cache hit");
}

#[tokio::test]
async fn changing_the_roots_drops_the_verify_cache_and_the_sessions() {
    let ca = Ca::new("ca");
    let leaf = ca.server(&[HOST], &[]);
    let plain = backend(&leaf, ServerOpts::default()).await;
    let resuming = backend(
        &leaf,
        ServerOpts {
            resumption: Resume::Tickets,
            ..ServerOpts::default()
        },
    )
    .await;

    let p1 = profile(0, &[&ca], HOST, vec![], None);
    let first =
        BackendTlsConfigs::from_profiles(std::slice::from_ref(&p1), &BackendTlsConfigs::default());
    let t1 = tls_of(&first, &p1);
    dial(&t1, &plain, Alpn::Http1).await.expect("full");
    dial(&t1, &plain, Alpn::Http1).await.expect("cache hit");
    dial(&t1, &resuming, Alpn::Http1)
        .await
        .expect("cache hit, ticket");
    dial(&t1, &resuming, Alpn::Http1).await.expect("resumed");
    let s = t1.stats();
    assert_eq!(
        (s.full_validations, s.cache_hits, s.resumed),
        (1, 2, 1),
        "{s:?}"
    );

    // Reload with the same roots: cache and sessions carry over.
    let p2 = profile(0, &[&ca], HOST, vec![], None);
    let second = BackendTlsConfigs::from_profiles(std::slice::from_ref(&p2), &first);
    let t2 = tls_of(&second, &p2);
    dial(&t2, &plain, Alpn::Http1).await.expect("cache hit");
    dial(&t2, &resuming, Alpn::Http1).await.expect("resumed");
    let s = t2.stats();
    assert_eq!((s.full_validations, s.cache_hits, s.resumed), (1, 3, 2));

    // Rotate: another CA added to the bundle. New verifier, empty cache, new stores.
    let p3 = profile(0, &[&ca, &Ca::new("next CA")], HOST, vec![], None);
    let third = BackendTlsConfigs::from_profiles(std::slice::from_ref(&p3), &second);
    let t3 = tls_of(&third, &p3);
    assert_ne!(t3.identity(), t2.identity());
    assert!(
        !third.is_current(t2.identity()),
        "old pooled connections retire"
    );
    dial(&t3, &plain, Alpn::Http1).await.expect("full again");
    dial(&t3, &resuming, Alpn::Http1)
        .await
        .expect("full, no old session");
    let s = t3.stats();
    assert_eq!(
        (s.full_validations, s.cache_hits, s.resumed),
        (1, 1, 0),
        "{s:?}"
    );
    // Process totals keep counting across builds.
    let totals = third.totals();
    assert_eq!((totals.full_validations, totals.cache_hits), (2, 4));
}

#[tokio::test]
async fn alpn_offers_and_the_negotiated_protocol() {
    let ca = Ca::new("ca");
    let leaf = ca.server(&[HOST], &[]);
    let h2 = backend(
        &leaf,
        ServerOpts {
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            ..ServerOpts::default()
        },
    )
    .await;
    let none = backend(&leaf, ServerOpts::default()).await;
    let (configs, p) = single(profile(0, &[&ca], HOST, vec![], None));
    let t = tls_of(&configs, &p);
    assert_eq!(
        dial(&t, &h2, Alpn::H2Http1).await.expect("h2"),
        Negotiated::H2
    );
    assert_eq!(
        dial(&t, &h2, Alpn::Http1).await.expect("h1"),
        Negotiated::Http1
    );
    assert_eq!(
        dial(&t, &none, Alpn::H2Http1).await.expect("no ALPN"),
        Negotiated::None
    );
}

#[tokio::test]
async fn a_stalled_handshake_times_out() {
    let ca = Ca::new("ca");
    let b = backend(
        &ca.server(&[HOST], &[]),
        ServerOpts {
            silent: true,
            ..ServerOpts::default()
        },
    )
    .await;
    let (configs, p) = single(profile(0, &[&ca], HOST, vec![], None));
    let t = tls_of(&configs, &p);
    let tcp = TcpStream::connect(b.addr).await.expect("tcp");
    let err = t
        .connect(tcp, None, Alpn::Http1, Duration::from_millis(200))
        .await
        .expect_err("timeout");
    assert!(
        matches!(err, BackendTlsError::HandshakeTimeout { .. }),
        "{err:?}"
    );
    assert_eq!(t.stats().handshake_failures, 1);
}

// ---------------------------------------------------------------------------------------
// System trust

const CHILD_ENV: &str = "GATEWAYD_BACKEND_TLS_CHILD_DIR";

/// `wellKnownCACertificates: System` reads SSL_CERT_FILE. The variable is process-wide,
/// so the check runs in a child process (this same test, re-executed) with it set.
#[test]
fn system_trust_honours_ssl_cert_file() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        system_trust_child(std::path::Path::new(&dir));
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "gatewayd-backend-tls-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca = Ca::new("system CA");
    let leaf = ca.server(&[HOST], &[]);
    let stranger = Ca::new("not in the store").server(&[HOST], &[]);
    std::fs::write(dir.join("roots.pem"), &ca.pem).expect("write");
    std::fs::write(dir.join("leaf.pem"), &leaf.chain_pem).expect("write");
    std::fs::write(dir.join("leaf.key"), &leaf.key_pem).expect("write");
    std::fs::write(dir.join("stranger.pem"), &stranger.chain_pem).expect("write");
    std::fs::write(dir.join("stranger.key"), &stranger.key_pem).expect("write");

    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "backend_tls::tests::system_trust_honours_ssl_cert_file",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &dir)
        .env("SSL_CERT_FILE", dir.join("roots.pem"))
        .env_remove("SSL_CERT_DIR")
        .output()
        .expect("run child");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "child ran no test:\n{stdout}");
}

fn system_trust_child(dir: &std::path::Path) {
    let load = |name: &str| Leaf {
        chain: CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))
            .expect("pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("certs"),
        chain_pem: String::new(),
        key: PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).expect("key"),
        key_pem: String::new(),
    };
    let (leaf, stranger) = (load("leaf"), load("stranger"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let p = Arc::new(BackendTlsProfile {
            id: 0,
            policy: policy(),
            roots: TrustRoots::System,
            hostname: HOST.into(),
            subject_alt_names: vec![],
            client_certificate: None,
        });
        let (configs, p) = single(p);
        let t = tls_of(&configs, &p);
        let ours = backend(&leaf, ServerOpts::default()).await;
        let theirs = backend(&stranger, ServerOpts::default()).await;
        dial(&t, &ours, Alpn::Http1)
            .await
            .expect("CA from SSL_CERT_FILE trusted");
        assert!(matches!(
            dial(&t, &theirs, Alpn::Http1).await,
            Err(BackendTlsError::Verify {
                source: VerifyError::UntrustedChain { .. }
            })
        ));
    });
}
