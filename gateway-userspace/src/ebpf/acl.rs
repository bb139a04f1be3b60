//! The ACL file (`--acl FILE`): source prefixes `xdp_flow` drops.
//!
//! Format: one CIDR per line (`10.0.0.0/8`, `2001:db8::/32`); a bare address means the
//! single host (`/32`, `/128`); `#` starts a comment, to the end of the line; blank lines
//! are ignored. Host bits below the prefix length are cleared, so `10.1.2.3/8` denies
//! `10.0.0.0/8`. Every bad line is reported with its number; a file with any bad line is
//! refused whole (at start-up gatewayd exits 1; on reload the previous ACL stays).

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

/// A denied prefix, host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Prefix {
    V4 { addr: [u8; 4], len: u8 },
    V6 { addr: [u8; 16], len: u8 },
}

impl Prefix {
    /// `addr/len` with the bits after `len` cleared; `None` when `len` is too long.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        match addr {
            IpAddr::V4(v4) if len <= 32 => Some(Self::V4 {
                addr: mask(v4.octets(), len),
                len,
            }),
            IpAddr::V6(v6) if len <= 128 => Some(Self::V6 {
                addr: mask(v6.octets(), len),
                len,
            }),
            _ => None,
        }
    }
}

fn mask<const N: usize>(mut bytes: [u8; N], len: u8) -> [u8; N] {
    for (i, byte) in bytes.iter_mut().enumerate() {
        let bits_before = i * 8;
        let keep = usize::from(len).saturating_sub(bits_before).min(8);
        *byte &= match keep {
            0 => 0,
            8 => 0xff,
            k => 0xffu8 << (8 - k),
        };
    }
    bytes
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4 { addr, len } => write!(f, "{}/{len}", Ipv4Addr::from(*addr)),
            Self::V6 { addr, len } => write!(f, "{}/{len}", Ipv6Addr::from(*addr)),
        }
    }
}

/// The set of denied prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    pub prefixes: BTreeSet<Prefix>,
}

/// One bad line of an ACL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclLineError {
    pub line: usize,
    pub text: String,
    pub reason: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("reading ACL file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ACL file {path} is not valid:{}", render_lines(.errors))]
    Invalid {
        path: PathBuf,
        errors: Vec<AclLineError>,
    },
}

fn render_lines(errors: &[AclLineError]) -> String {
    errors
        .iter()
        .map(|e| format!("\n  line {}: {:?}: {}", e.line, e.text, e.reason))
        .collect()
}

impl Acl {
    /// Parses the text of an ACL file; every bad line is in the error.
    pub fn parse(text: &str) -> Result<Self, Vec<AclLineError>> {
        let mut prefixes = BTreeSet::new();
        let mut errors = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            match parse_prefix(content) {
                Ok(prefix) => {
                    prefixes.insert(prefix);
                }
                Err(reason) => errors.push(AclLineError {
                    line: index + 1,
                    text: content.to_owned(),
                    reason,
                }),
            }
        }
        if errors.is_empty() {
            Ok(Self { prefixes })
        } else {
            Err(errors)
        }
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|errors| AclError::Invalid {
            path: path.to_owned(),
            errors,
        })
    }

    pub fn v4_len(&self) -> usize {
        self.prefixes
            .iter()
            .filter(|p| matches!(p, Prefix::V4 { .. }))
            .count()
    }

    pub fn v6_len(&self) -> usize {
        self.prefixes.len() - self.v4_len()
    }
}

fn parse_prefix(text: &str) -> Result<Prefix, &'static str> {
    if text.split_whitespace().nth(1).is_some() {
        return Err("one CIDR per line");
    }
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| "not an IPv4 or IPv6 address (expected e.g. 10.0.0.0/8 or 2001:db8::/32)")?;
    let len = match len {
        Some(len) => len
            .parse::<u8>()
            .map_err(|_| "the prefix length is not a number")?,
        None if addr.is_ipv4() => 32,
        None => 128,
    };
    Prefix::new(addr, len).ok_or(if addr.is_ipv4() {
        "an IPv4 prefix length is at most 32"
    } else {
        "an IPv6 prefix length is at most 128"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(acl: &Acl) -> Vec<String> {
        acl.prefixes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn comments_blank_lines_and_bare_addresses_are_understood() {
        let acl = Acl::parse(
            "# denied sources\n\n10.0.0.0/8\n192.0.2.7   # one host\n  2001:db8::/32\n::1\n",
        )
        .expect("valid");
        assert_eq!(
            prefixes(&acl),
            ["10.0.0.0/8", "192.0.2.7/32", "::1/128", "2001:db8::/32"]
        );
        assert_eq!((acl.v4_len(), acl.v6_len()), (2, 2));
    }

    #[test]
    fn host_bits_below_the_prefix_are_cleared() {
        let acl = Acl::parse("10.1.2.3/8\n10.255.0.0/9\n2001:db8:ffff::1/33\n").expect("valid");
        assert_eq!(
            prefixes(&acl),
            ["10.0.0.0/8", "10.128.0.0/9", "2001:db8:8000::/33"]
        );
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let errors =
            Acl::parse("10.0.0.0/8\nnot-an-ip\n10.0.0.0/33\n::/129\n1.2.3.4/x\n1.1.1.1 2.2.2.2\n")
                .expect_err("invalid");
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6]);
        assert_eq!(errors[1].reason, "an IPv4 prefix length is at most 32");
        assert_eq!(errors[2].reason, "an IPv6 prefix length is at most 128");
    }

    #[test]
    fn an_empty_file_denies_nothing() {
        assert_eq!(Acl::parse("# nothing yet\n"), Ok(Acl::default()));
    }
}
