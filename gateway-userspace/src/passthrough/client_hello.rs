//! The ClientHello peek: find the SNI of a TLS ClientHello in the bytes a client sent
//! first, without decrypting or consuming anything.
//!
//! Pure and dependency-free (`core`/`std` only, no crate paths): the fuzz crate in
//! `fuzz/` compiles this very file on its own (`#[path]`), so keep it that way.
//!
//! The ClientHello may arrive in several TCP segments (the caller peeks again with more
//! bytes: [`Peek::NeedMore`]) and may be fragmented over several TLS records (the
//! handshake message is reassembled; RFC 8446 §5.1 allows any split of a handshake
//! message over records of the same content type). Everything is bounded: a ClientHello
//! longer than [`MAX_CLIENT_HELLO_LEN`] or one that needs more than [`MAX_PEEK_LEN`]
//! bytes of records is [`Invalid::TooLarge`].

/// Longest ClientHello handshake body accepted (a post-quantum key share plus GREASE and
/// padding stays under 3 KiB; 16 KiB is the most one plaintext record carries).
pub const MAX_CLIENT_HELLO_LEN: usize = 16 * 1024;

/// Most bytes (record headers included) the peek looks at; a caller's peek buffer need
/// never be larger. Leaves room for a maximal ClientHello split over a few records.
pub const MAX_PEEK_LEN: usize = MAX_CLIENT_HELLO_LEN + 2 * 1024;

/// Longest DNS name in an SNI (RFC 1035: 253 characters without the trailing dot).
pub const MAX_SERVER_NAME_LEN: usize = 253;

const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// RFC 8446 §5.1: a plaintext record carries at most 2^14 bytes.
const MAX_RECORD_PAYLOAD: usize = 16 * 1024;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// What the bytes seen so far say.
// `Sni` is 254 bytes on purpose: the name stays inline, one per connection, no allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peek {
    /// A valid prefix of a ClientHello: peek again once more bytes arrived.
    NeedMore,
    /// A complete ClientHello with this SNI host name (lowercased).
    Sni(ServerName),
    /// A complete ClientHello without a `server_name` host name.
    NoSni,
    /// Not a TLS handshake record (plain HTTP, SSLv2, anything else).
    NotTls,
    /// A TLS record, but not a well-formed, bounded ClientHello.
    Invalid(Invalid),
}

/// Why a ClientHello was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// A record header is wrong: another content type between fragments, a record
    /// longer than 2^14 bytes, or an empty handshake record.
    Record,
    /// The first handshake message is not a ClientHello.
    NotClientHello,
    /// Longer than [`MAX_CLIENT_HELLO_LEN`], or more than [`MAX_PEEK_LEN`] bytes of records.
    TooLarge,
    /// A length field disagrees with the bytes, or an extension repeats.
    Malformed,
    /// The `server_name` host name is empty, too long or not a DNS name.
    ServerName,
}

/// An SNI host name, lowercased, held inline (no allocation): `Copy`, at most
/// [`MAX_SERVER_NAME_LEN`] ASCII bytes of letters, digits, `-`, `_` and `.`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerName {
    len: u8,
    bytes: [u8; MAX_SERVER_NAME_LEN],
}

impl ServerName {
    /// Check and lowercase a host name as sent in the `server_name` extension.
    pub fn parse(raw: &[u8]) -> Option<ServerName> {
        if raw.is_empty() || raw.len() > MAX_SERVER_NAME_LEN {
            return None;
        }
        let mut bytes = [0u8; MAX_SERVER_NAME_LEN];
        for (dst, &b) in bytes.iter_mut().zip(raw) {
            if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
                return None;
            }
            *dst = b.to_ascii_lowercase();
        }
        Some(ServerName {
            len: u8::try_from(raw.len()).ok()?,
            bytes,
        })
    }

    /// The host name.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (see `parse`), so this never takes the fallback.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Look for the SNI of a ClientHello at the start of `buf` (the bytes a client sent
/// first, as peeked from the socket). Pure: allocates only when the ClientHello is
/// fragmented over several records (it is then reassembled). Bytes after the
/// ClientHello (e.g. early data) are ignored.
pub fn peek_sni(buf: &[u8]) -> Peek {
    match peek(buf) {
        Ok(p) => p,
        Err(Stop::NeedMore) if buf.len() >= MAX_PEEK_LEN => Peek::Invalid(Invalid::TooLarge),
        Err(Stop::NeedMore) => Peek::NeedMore,
        Err(Stop::NotTls) => Peek::NotTls,
        Err(Stop::Invalid(why)) => Peek::Invalid(why),
    }
}

enum Stop {
    NeedMore,
    NotTls,
    Invalid(Invalid),
}

impl From<Invalid> for Stop {
    fn from(why: Invalid) -> Self {
        Stop::Invalid(why)
    }
}

/// The record at `buf[at..]`: its payload, or why there is none yet.
fn record(buf: &[u8], at: usize) -> Result<&[u8], Stop> {
    let rest = buf.get(at..).unwrap_or_default();
    // Decide NotTls from the first byte(s) already: a plain-HTTP client never has to
    // send 5 bytes before we can close.
    match rest.first() {
        None => return Err(Stop::NeedMore),
        Some(&CONTENT_TYPE_HANDSHAKE) => {}
        Some(_) if at == 0 => return Err(Stop::NotTls),
        Some(_) => return Err(Invalid::Record.into()),
    }
    match rest.get(1) {
        None => return Err(Stop::NeedMore),
        Some(3) => {}
        Some(_) if at == 0 => return Err(Stop::NotTls),
        Some(_) => return Err(Invalid::Record.into()),
    }
    let Some(header) = rest.get(..RECORD_HEADER_LEN) else {
        return Err(Stop::NeedMore);
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len == 0 || len > MAX_RECORD_PAYLOAD {
        return Err(Invalid::Record.into());
    }
    rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len)
        .ok_or(Stop::NeedMore)
}

fn peek(buf: &[u8]) -> Result<Peek, Stop> {
    let first = record(buf, 0)?;
    // The handshake header may itself be split over records: gather its 4 bytes.
    let mut header = [0u8; HANDSHAKE_HEADER_LEN];
    let mut have = 0;
    let mut at = 0;
    let mut payload = first;
    loop {
        let take = (HANDSHAKE_HEADER_LEN - have).min(payload.len());
        header[have..have + take].copy_from_slice(&payload[..take]);
        have += take;
        if have == HANDSHAKE_HEADER_LEN {
            break;
        }
        at += RECORD_HEADER_LEN + payload.len();
        payload = record(buf, at)?;
    }
    if header[0] != HANDSHAKE_CLIENT_HELLO {
        return Err(Invalid::NotClientHello.into());
    }
    let body_len =
        usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    if body_len > MAX_CLIENT_HELLO_LEN {
        return Err(Invalid::TooLarge.into());
    }
    // Fast path: the whole ClientHello is in the first record (every real client).
    if let Some(body) = first.get(HANDSHAKE_HEADER_LEN..HANDSHAKE_HEADER_LEN + body_len) {
        return parse_client_hello(body);
    }
    // Fragmented: reassemble the body from the records that follow.
    let mut body = Vec::with_capacity(body_len);
    let mut at = 0;
    let mut skip = HANDSHAKE_HEADER_LEN;
    while body.len() < body_len {
        let payload = record(buf, at)?;
        let data = payload.get(skip..).unwrap_or_default();
        skip = skip.saturating_sub(payload.len());
        let take = (body_len - body.len()).min(data.len());
        body.extend_from_slice(&data[..take]);
        at += RECORD_HEADER_LEN + payload.len();
    }
    parse_client_hello(&body)
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        if n > self.rest.len() {
            return Err(Invalid::Malformed);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Invalid> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Invalid> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a 1-byte length prefix.
    fn vec8(&mut self) -> Result<&'a [u8], Invalid> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }

    /// A vector with a 2-byte length prefix.
    fn vec16(&mut self) -> Result<&'a [u8], Invalid> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// RFC 8446 §4.1.2 (and RFC 5246 §7.4.1.2, whose ClientHello may omit extensions).
fn parse_client_hello(body: &[u8]) -> Result<Peek, Stop> {
    let mut r = Reader { rest: body };
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    if r.vec8()?.len() > 32 {
        return Err(Invalid::Malformed.into()); // legacy_session_id
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Invalid::Malformed.into());
    }
    if r.vec8()?.is_empty() {
        return Err(Invalid::Malformed.into()); // legacy_compression_methods
    }
    if r.is_empty() {
        return Ok(Peek::NoSni);
    }
    let mut exts = Reader { rest: r.vec16()? };
    if !r.is_empty() {
        return Err(Invalid::Malformed.into());
    }
    let mut sni = None;
    let mut seen_server_name = false;
    while !exts.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != EXTENSION_SERVER_NAME {
            continue;
        }
        // RFC 8446 §4.2: no extension type appears twice.
        if seen_server_name {
            return Err(Invalid::Malformed.into());
        }
        seen_server_name = true;
        sni = server_name(data)?;
    }
    Ok(sni.map_or(Peek::NoSni, Peek::Sni))
}

/// RFC 6066 §3: the `server_name` extension body.
fn server_name(data: &[u8]) -> Result<Option<ServerName>, Stop> {
    let mut ext = Reader { rest: data };
    let mut list = Reader { rest: ext.vec16()? };
    if !ext.is_empty() || list.is_empty() {
        return Err(Invalid::Malformed.into());
    }
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8()?;
        let name = list.vec16()?;
        if name_type != NAME_TYPE_HOST_NAME {
            continue; // other name types are defined to be skipped
        }
        // "The ServerNameList MUST NOT contain more than one name of the same name_type."
        if host.is_some() {
            return Err(Invalid::Malformed.into());
        }
        host = Some(ServerName::parse(name).ok_or(Invalid::ServerName)?);
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, as rustls writes it (one record).
    fn rustls_client_hello(sni: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("invariant: default versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name =
            rustls_pki_types::ServerName::try_from(sni.to_string()).expect("test server name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("write hello");
        out
    }

    /// The handshake message of a one-record ClientHello, re-split into records carrying
    /// at most `frag` bytes each.
    fn refragment(hello: &[u8], frag: usize) -> Vec<u8> {
        let msg = &hello[RECORD_HEADER_LEN..];
        let mut out = Vec::new();
        for chunk in msg.chunks(frag) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&u16::try_from(chunk.len()).expect("chunk").to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// A hand-built ClientHello record with these extensions (type, data).
    fn client_hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        if !exts.is_empty() {
            let mut e = Vec::new();
            for (kind, data) in exts {
                e.extend_from_slice(&kind.to_be_bytes());
                e.extend_from_slice(&u16::try_from(data.len()).expect("ext").to_be_bytes());
                e.extend_from_slice(data);
            }
            body.extend_from_slice(&u16::try_from(e.len()).expect("exts").to_be_bytes());
            body.extend_from_slice(&e);
        }
        let mut msg = vec![1];
        msg.extend_from_slice(&u32::try_from(body.len()).expect("body").to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&u16::try_from(msg.len()).expect("msg").to_be_bytes());
        rec.extend_from_slice(&msg);
        rec
    }

    fn sni_ext(names: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for (t, n) in names {
            list.push(*t);
            list.extend_from_slice(&u16::try_from(n.len()).expect("name").to_be_bytes());
            list.extend_from_slice(n);
        }
        let mut data = u16::try_from(list.len())
            .expect("list")
            .to_be_bytes()
            .to_vec();
        data.extend_from_slice(&list);
        (0, data)
    }

    fn sni(p: Peek) -> Option<String> {
        match p {
            Peek::Sni(s) => Some(s.as_str().to_string()),
            _ => None,
        }
    }

    #[test]
    fn a_real_client_hello_yields_its_sni() {
        let hello = rustls_client_hello("Backend.Example.TEST");
        assert_eq!(
            sni(peek_sni(&hello)).as_deref(),
            Some("backend.example.test")
        );
    }

    #[test]
    fn every_split_point_of_one_record_needs_more_until_the_last_byte() {
        let hello = rustls_client_hello("a.example.com");
        for cut in 0..hello.len() {
            assert_eq!(peek_sni(&hello[..cut]), Peek::NeedMore, "cut at {cut}");
        }
        assert_eq!(sni(peek_sni(&hello)).as_deref(), Some("a.example.com"));
    }

    #[test]
    fn a_client_hello_fragmented_over_records_is_reassembled_at_every_split_point() {
        let hello = rustls_client_hello("frag.example.com");
        for frag in [1, 2, 3, 4, 5, 7, 64, 100, 511] {
            let records = refragment(&hello, frag);
            assert!(records.len() < MAX_PEEK_LEN, "frag {frag}");
            for cut in 0..records.len() {
                assert_eq!(
                    peek_sni(&records[..cut]),
                    Peek::NeedMore,
                    "frag {frag}, cut {cut}"
                );
            }
            assert_eq!(
                sni(peek_sni(&records)).as_deref(),
                Some("frag.example.com"),
                "frag {frag}"
            );
        }
    }

    #[test]
    fn bytes_after_the_client_hello_are_ignored() {
        let mut hello = rustls_client_hello("a.example.com");
        hello.extend_from_slice(&[23, 3, 3, 0, 5, 1, 2, 3, 4, 5]);
        assert_eq!(sni(peek_sni(&hello)).as_deref(), Some("a.example.com"));
    }

    #[test]
    fn a_client_hello_without_server_name_has_no_sni() {
        assert_eq!(peek_sni(&client_hello(&[])), Peek::NoSni);
        assert_eq!(
            peek_sni(&client_hello(&[(10, vec![0, 2, 0, 29])])),
            Peek::NoSni
        );
        // Only a name type other than host_name.
        assert_eq!(
            peek_sni(&client_hello(&[sni_ext(&[(7, b"x")])])),
            Peek::NoSni
        );
    }

    #[test]
    fn plain_http_and_sslv2_are_not_tls_from_the_first_byte() {
        assert_eq!(peek_sni(b"G"), Peek::NotTls);
        assert_eq!(peek_sni(b"GET / HTTP/1.1\r\n"), Peek::NotTls);
        assert_eq!(peek_sni(&[0x80, 0x2e, 0x01]), Peek::NotTls);
        assert_eq!(peek_sni(&[22, 2]), Peek::NotTls);
        assert_eq!(peek_sni(&[]), Peek::NeedMore);
        assert_eq!(peek_sni(&[22]), Peek::NeedMore);
    }

    #[test]
    fn malformed_client_hellos_are_invalid() {
        let good = client_hello(&[sni_ext(&[(0, b"a.example.com")])]);
        assert_eq!(sni(peek_sni(&good)).as_deref(), Some("a.example.com"));
        let cases: Vec<(&str, Vec<u8>, Invalid)> = vec![
            ("empty record", vec![22, 3, 1, 0, 0], Invalid::Record),
            (
                "record over 2^14",
                vec![22, 3, 1, 0x40, 0x01],
                Invalid::Record,
            ),
            (
                "server hello",
                {
                    let mut h = good.clone();
                    h[5] = 2;
                    h
                },
                Invalid::NotClientHello,
            ),
            (
                "hello over 16 KiB",
                vec![22, 3, 1, 0, 4, 1, 0, 0x40, 0x01],
                Invalid::TooLarge,
            ),
            (
                "alert between fragments",
                {
                    let mut r = refragment(&good, 10);
                    r[15] = 21;
                    r
                },
                Invalid::Record,
            ),
            (
                "two host names",
                client_hello(&[sni_ext(&[(0, b"a.com"), (0, b"b.com")])]),
                Invalid::Malformed,
            ),
            (
                "two server_name extensions",
                client_hello(&[sni_ext(&[(0, b"a.com")]), sni_ext(&[(0, b"b.com")])]),
                Invalid::Malformed,
            ),
            (
                "empty server name list",
                client_hello(&[(0, vec![0, 0])]),
                Invalid::Malformed,
            ),
            (
                "list length past the extension",
                client_hello(&[(0, vec![0, 9, 0, 0, 1, b'a'])]),
                Invalid::Malformed,
            ),
            (
                "empty host name",
                client_hello(&[sni_ext(&[(0, b"")])]),
                Invalid::ServerName,
            ),
            (
                "host name with a space",
                client_hello(&[sni_ext(&[(0, b"a b.com")])]),
                Invalid::ServerName,
            ),
            (
                "host name not ASCII",
                client_hello(&[sni_ext(&[(0, "é.com".as_bytes())])]),
                Invalid::ServerName,
            ),
            (
                "host name over 253",
                client_hello(&[sni_ext(&[(0, &[b'a'; 254])])]),
                Invalid::ServerName,
            ),
            (
                "extension past the end",
                {
                    let mut h = client_hello(&[sni_ext(&[(0, b"a.com")])]);
                    let n = h.len();
                    h[n - 10] = 0xff; // server name list length
                    h
                },
                Invalid::Malformed,
            ),
            (
                "trailing bytes after extensions",
                {
                    // Grow record and handshake lengths by one and append a byte.
                    let mut h = client_hello(&[sni_ext(&[(0, b"a.com")])]);
                    h[4] += 1;
                    h[8] += 1;
                    h.push(0);
                    h
                },
                Invalid::Malformed,
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(peek_sni(&bytes), Peek::Invalid(want), "{name}");
        }
    }

    #[test]
    fn an_endlessly_fragmented_hello_is_too_large_at_the_peek_bound() {
        // A ClientHello of 8000 bytes sent one byte per record needs ~48 KiB of records.
        let mut records = Vec::new();
        for b in [1u8, 0, 0x1f, 0x40] {
            records.extend_from_slice(&[22, 3, 1, 0, 1, b]);
        }
        while records.len() < MAX_PEEK_LEN {
            records.extend_from_slice(&[22, 3, 1, 0, 1, 0]);
        }
        assert_eq!(peek_sni(&records[..MAX_PEEK_LEN - 1]), Peek::NeedMore);
        assert_eq!(
            peek_sni(&records[..MAX_PEEK_LEN]),
            Peek::Invalid(Invalid::TooLarge)
        );
    }

    #[test]
    fn server_names_are_lowercased_and_bounded() {
        let n = ServerName::parse(b"WWW.Example.COM").expect("valid");
        assert_eq!(n.as_str(), "www.example.com");
        assert_eq!(format!("{n}"), "www.example.com");
        assert!(ServerName::parse(&[b'a'; 253]).is_some());
        assert!(ServerName::parse(&[b'a'; 254]).is_none());
        assert!(ServerName::parse(b"").is_none());
        assert!(ServerName::parse(b"a/b").is_none());
    }
}
