//! The verify cache: chains a verifier has fully validated, by digest, until they must be
//! validated again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use aws_lc_rs::digest;
use rustls::pki_types::CertificateDer;

/// SHA-256 of a presented chain (each certificate length-prefixed, in the order sent).
pub(crate) type ChainDigest = [u8; 32];

/// The digest of the chain a server presented: the end-entity certificate, then the
/// intermediates in the order they came. Length prefixes keep two different splits of
/// the same bytes apart.
pub(crate) fn chain_digest(end_entity: &[u8], intermediates: &[CertificateDer<'_>]) -> ChainDigest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for der in std::iter::once(end_entity).chain(intermediates.iter().map(|c| c.as_ref())) {
        ctx.update(&u32::try_from(der.len()).unwrap_or(u32::MAX).to_be_bytes());
        ctx.update(der);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Bounded map from chain digest to the span of Unix seconds in which the chain needs no
/// new validation: from the validation (every certificate had started its validity by
/// then, so a clock stepped back before it misses) to the earliest notAfter or the TTL.
/// Oldest entries go first when full. One per verifier, so one per
/// (roots, names): a verifier built for other roots starts empty.
#[derive(Debug)]
pub(crate) struct VerifyCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Clone, Copy, Debug)]
struct Span {
    from: u64,
    until: u64,
    /// Insertion sequence number, to tell stale queue items.
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<ChainDigest, Span>,
    /// Insertion order; an item whose sequence number no longer matches the map's is stale.
    order: VecDeque<(ChainDigest, u64)>,
    next_seq: u64,
}

impl VerifyCache {
    /// A cache of at most `capacity` chains; 0 turns it off.
    pub(crate) fn new(capacity: usize) -> Self {
        VerifyCache {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent even if a holder panicked: every critical section
        // leaves it valid after each statement.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `true` when `digest` was validated and is still good at `now` (Unix seconds).
    pub(crate) fn is_fresh(&self, digest: &ChainDigest, now: u64) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let mut inner = self.lock();
        match inner.map.get(digest) {
            Some(s) if s.from <= now && now < s.until => true,
            Some(_) => {
                inner.map.remove(digest);
                false
            }
            None => false,
        }
    }

    /// Remember that `digest`, validated at `now`, stays valid until `until` (Unix
    /// seconds, exclusive).
    pub(crate) fn insert(&self, digest: ChainDigest, until: u64, now: u64) {
        if self.capacity == 0 || until <= now {
            return;
        }
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.map.insert(
            digest,
            Span {
                from: now,
                until,
                seq,
            },
        );
        inner.order.push_back((digest, seq));
        while inner.map.len() > self.capacity {
            let Some((old, old_seq)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&old).is_some_and(|s| s.seq == old_seq) {
                inner.map.remove(&old);
            }
        }
        // Refreshed and expired digests leave stale items behind; keep the queue bounded.
        if inner.order.len() > self.capacity.saturating_mul(2) {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|(d, seq)| map.get(d).is_some_and(|s| s.seq == *seq));
        }
    }

    /// Number of chains held.
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> ChainDigest {
        [n; 32]
    }

    #[test]
    fn an_entry_is_fresh_until_its_deadline_and_then_forgotten() {
        let c = VerifyCache::new(4);
        c.insert(d(1), 100, 10);
        assert!(c.is_fresh(&d(1), 99));
        assert!(!c.is_fresh(&d(1), 100), "the deadline is exclusive");
        assert_eq!(c.len(), 0, "an expired entry is dropped when seen");
    }

    #[test]
    fn a_clock_stepped_back_before_the_validation_misses() {
        let c = VerifyCache::new(4);
        c.insert(d(1), 100, 50);
        assert!(c.is_fresh(&d(1), 50));
        assert!(!c.is_fresh(&d(1), 49));
    }

    #[test]
    fn the_oldest_entry_goes_first_when_full() {
        let c = VerifyCache::new(2);
        c.insert(d(1), 100, 0);
        c.insert(d(2), 100, 0);
        c.insert(d(3), 100, 0);
        assert_eq!(c.len(), 2);
        assert!(!c.is_fresh(&d(1), 1));
        assert!(c.is_fresh(&d(2), 1) && c.is_fresh(&d(3), 1));
    }

    #[test]
    fn a_refreshed_entry_is_not_evicted_by_its_stale_queue_item() {
        let c = VerifyCache::new(2);
        c.insert(d(1), 100, 0);
        c.insert(d(2), 100, 0);
        c.insert(d(1), 200, 0); // refreshed: now the newest
        c.insert(d(3), 100, 0); // evicts the stale item of 1, then 2
        assert!(c.is_fresh(&d(1), 150));
        assert!(!c.is_fresh(&d(2), 1));
        assert!(c.is_fresh(&d(3), 1));
        for n in 0..50 {
            c.insert(d(1), 300 + n, 0);
        }
        assert!(
            c.inner.lock().expect("lock").order.len() <= 4,
            "queue bounded"
        );
    }

    #[test]
    fn capacity_zero_caches_nothing_and_past_deadlines_are_not_stored() {
        let off = VerifyCache::new(0);
        off.insert(d(1), 100, 0);
        assert!(!off.is_fresh(&d(1), 1));
        let c = VerifyCache::new(4);
        c.insert(d(1), 10, 10);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn the_chain_digest_depends_on_how_the_chain_is_split() {
        let a = chain_digest(b"ab", &[CertificateDer::from(b"c".to_vec())]);
        let b = chain_digest(b"a", &[CertificateDer::from(b"bc".to_vec())]);
        assert_ne!(a, b);
        assert_eq!(
            a,
            chain_digest(b"ab", &[CertificateDer::from(b"c".to_vec())])
        );
    }
}
