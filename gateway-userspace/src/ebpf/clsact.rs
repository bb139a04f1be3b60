//! The `clsact` qdisc `tc_reply` falls back to where TCX is missing: gatewayd removes on
//! exit the one it created, once no filter is left on it (its own filter goes with the
//! program; a filter someone else added meanwhile keeps the qdisc).
//!
//! aya creates the qdisc but has no call to delete it, so this speaks rtnetlink itself:
//! one dump of the filters (`RTM_GETTFILTER`) on each clsact hook, one `RTM_DELQDISC`.
//!
//! The check and the delete are two requests: a filter added between the dump and the
//! delete goes with the qdisc. rtnetlink has no "delete if empty", so the window stays;
//! it is as short as two round trips at exit. Where the dump is not trustworthy (it ended
//! with an error, or the kernel flagged it `NLM_F_DUMP_INTR` because the filters changed
//! while it was read) the qdisc is left in place: keeping an empty qdisc is harmless,
//! deleting someone's filter is not.

use std::{ffi::CString, io::Read as _};

use socket2::{Domain, Protocol, Socket, Type};

const NETLINK_ROUTE: i32 = 0;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// Set on the messages of a dump whose objects changed while it was read.
const NLM_F_DUMP_INTR: u16 = 0x10;
const TCA_KIND: u16 = 1;
/// `TC_H_CLSACT`: the parent of a clsact qdisc.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// The clsact qdisc's handle (`ffff:`).
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
/// `ffff:fff2` and `ffff:fff3`: the parents of ingress and egress filters.
const HOOKS: [u32; 2] = [0xFFFF_FFF2, 0xFFFF_FFF3];
const NLMSG_HDR_LEN: usize = 16;

/// The interface's index, as the kernel numbers it in this network namespace.
pub fn ifindex(iface: &str) -> std::io::Result<u32> {
    let name = CString::new(iface)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    #[allow(unsafe_code)]
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(index)
}

/// A request: `nlmsghdr`, `tcmsg` for `ifindex` with `handle` and `parent`, and the
/// attribute `TCA_KIND` when given.
fn message(
    kind: u16,
    flags: u16,
    ifindex: u32,
    handle: u32,
    parent: u32,
    qdisc: Option<&str>,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(40);
    // tcmsg: family (AF_UNSPEC), 3 bytes of padding, ifindex, handle, parent, info.
    body.extend_from_slice(&[0, 0, 0, 0]);
    body.extend_from_slice(&ifindex.to_ne_bytes());
    body.extend_from_slice(&handle.to_ne_bytes());
    body.extend_from_slice(&parent.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    if let Some(qdisc) = qdisc {
        let len = 4 + qdisc.len() + 1;
        body.extend_from_slice(&(len as u16).to_ne_bytes());
        body.extend_from_slice(&TCA_KIND.to_ne_bytes());
        body.extend_from_slice(qdisc.as_bytes());
        body.push(0);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let mut msg = Vec::with_capacity(NLMSG_HDR_LEN + body.len());
    msg.extend_from_slice(&((NLMSG_HDR_LEN + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend_from_slice(&body);
    msg
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// What the kernel answered so far: messages of `kind` counted, whether the answer is
/// complete (an ack, an error or the end of a dump), and whether a dump was interrupted.
#[derive(Debug, Default, PartialEq, Eq)]
struct Answer {
    counted: usize,
    done: bool,
    interrupted: bool,
}

/// Walks the messages of one datagram; `Err` with the kernel's errno for an error, whether
/// in `NLMSG_ERROR` or at the end of a dump (`NLMSG_DONE` carries one too).
fn read_answer(datagram: &[u8], kind: u16, answer: &mut Answer) -> std::io::Result<()> {
    let malformed =
        || std::io::Error::new(std::io::ErrorKind::InvalidData, "short netlink message");
    let mut at = 0;
    while at + NLMSG_HDR_LEN <= datagram.len() {
        let len = u32_at(datagram, at).ok_or_else(malformed)? as usize;
        let msg_type = u16_at(datagram, at + 4).ok_or_else(malformed)?;
        let flags = u16_at(datagram, at + 6).ok_or_else(malformed)?;
        if len < NLMSG_HDR_LEN || at + len > datagram.len() {
            return Err(malformed());
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            answer.interrupted = true;
        }
        match msg_type {
            NLMSG_ERROR => {
                let errno = u32_at(datagram, at + NLMSG_HDR_LEN).ok_or_else(malformed)? as i32;
                answer.done = true;
                if errno != 0 {
                    return Err(std::io::Error::from_raw_os_error(-errno));
                }
            }
            NLMSG_DONE => {
                answer.done = true;
                // The dump's own errno; a bare header (older kernels) means success.
                let errno = if len >= NLMSG_HDR_LEN + 4 {
                    u32_at(datagram, at + NLMSG_HDR_LEN).ok_or_else(malformed)? as i32
                } else {
                    0
                };
                if errno != 0 {
                    return Err(std::io::Error::from_raw_os_error(-errno));
                }
            }
            t if t == kind => answer.counted += 1,
            _ => {}
        }
        at += len.next_multiple_of(4);
    }
    Ok(())
}

/// Sends `request` and reads until the answer is complete.
fn exchange(request: &[u8], kind: u16) -> std::io::Result<Answer> {
    let socket = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(NETLINK_ROUTE)),
    )?;
    socket.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    // Unbound and unconnected, a netlink socket sends to the kernel.
    socket.send(request)?;
    let mut answer = Answer::default();
    let mut buf = vec![0u8; 32 * 1024];
    while !answer.done {
        let n = (&socket).read(&mut buf)?;
        read_answer(&buf[..n], kind, &mut answer)?;
    }
    Ok(answer)
}

/// Filters on the ingress and egress hooks of the clsact qdisc of `ifindex`; an error when
/// the count cannot be trusted (an interrupted dump).
fn filters(ifindex: u32) -> std::io::Result<usize> {
    let mut total = 0;
    for parent in HOOKS {
        let request = message(
            RTM_GETTFILTER,
            NLM_F_REQUEST | NLM_F_DUMP,
            ifindex,
            0,
            parent,
            None,
        );
        total += counted(exchange(&request, RTM_NEWTFILTER)?)?;
    }
    Ok(total)
}

/// The count of a complete dump; an error for one the kernel marked interrupted.
fn counted(answer: Answer) -> std::io::Result<usize> {
    if answer.interrupted {
        return Err(std::io::Error::other(
            "the filter dump was interrupted by a concurrent change (NLM_F_DUMP_INTR)",
        ));
    }
    Ok(answer.counted)
}

/// What [`remove_if_unused`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// Some filter is on the qdisc: it stays.
    InUse,
    /// There was no clsact qdisc any more (someone deleted it).
    AlreadyGone,
}

/// Deletes the clsact qdisc of `ifindex` when no filter is left on it. An error (the dump
/// failed or was interrupted, or the delete was refused) leaves it in place.
pub fn remove_if_unused(ifindex: u32) -> std::io::Result<Removal> {
    if filters(ifindex)? > 0 {
        return Ok(Removal::InUse);
    }
    let request = message(
        RTM_DELQDISC,
        NLM_F_REQUEST | NLM_F_ACK,
        ifindex,
        CLSACT_HANDLE,
        TC_H_CLSACT,
        Some("clsact"),
    );
    match exchange(&request, 0) {
        Ok(_) => Ok(Removal::Removed),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(Removal::AlreadyGone),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qdisc_delete_request_is_laid_out_as_rtnetlink_expects() {
        let msg = message(
            RTM_DELQDISC,
            NLM_F_REQUEST | NLM_F_ACK,
            7,
            CLSACT_HANDLE,
            TC_H_CLSACT,
            Some("clsact"),
        );
        // 16 (header) + 20 (tcmsg) + 4 + 7 ("clsact\0") padded to 12.
        assert_eq!(msg.len(), 48);
        assert_eq!(u32_at(&msg, 0), Some(48));
        assert_eq!(u16_at(&msg, 4), Some(RTM_DELQDISC));
        assert_eq!(u16_at(&msg, 6), Some(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(u32_at(&msg, 20), Some(7), "ifindex");
        assert_eq!(u32_at(&msg, 24), Some(0xFFFF_0000), "handle ffff:");
        assert_eq!(u32_at(&msg, 28), Some(0xFFFF_FFF1), "parent clsact");
        assert_eq!(
            u16_at(&msg, 36),
            Some(11),
            "attribute length without padding"
        );
        assert_eq!(u16_at(&msg, 38), Some(TCA_KIND));
        assert_eq!(&msg[40..47], b"clsact\0");
    }

    fn header(len: u32, kind: u16) -> Vec<u8> {
        let mut h = len.to_ne_bytes().to_vec();
        h.extend_from_slice(&kind.to_ne_bytes());
        h.extend_from_slice(&[0; 10]);
        h
    }

    #[test]
    fn answers_count_their_messages_and_carry_the_kernels_errno() {
        let mut dump = header(20, RTM_NEWTFILTER);
        dump.extend_from_slice(&[0; 4]);
        dump.extend(header(16, RTM_NEWTFILTER));
        dump.extend(header(16, NLMSG_DONE));
        let mut answer = Answer::default();
        read_answer(&dump, RTM_NEWTFILTER, &mut answer).expect("a dump");
        assert_eq!(
            answer,
            Answer {
                counted: 2,
                done: true,
                interrupted: false,
            }
        );
        assert_eq!(counted(answer).expect("complete"), 2);

        let mut ack = header(36, NLMSG_ERROR);
        ack.extend_from_slice(&0i32.to_ne_bytes());
        ack.extend_from_slice(&[0; 16]);
        let mut answer = Answer::default();
        read_answer(&ack, 0, &mut answer).expect("an ack");
        assert!(answer.done);

        let mut refused = header(36, NLMSG_ERROR);
        refused.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        refused.extend_from_slice(&[0; 16]);
        let err = read_answer(&refused, 0, &mut Answer::default()).expect_err("ENOENT");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));

        let err = read_answer(&header(64, RTM_NEWTFILTER), 0, &mut Answer::default());
        assert!(err.is_err(), "a length past the datagram is refused");
    }

    #[test]
    fn a_dump_that_ends_in_an_error_or_was_interrupted_is_not_a_count() {
        // NLMSG_DONE with the dump's errno.
        let mut failed = header(20, RTM_NEWTFILTER);
        failed.extend_from_slice(&[0; 4]);
        failed.extend(header(20, NLMSG_DONE));
        failed.extend_from_slice(&(-libc::EINVAL).to_ne_bytes());
        let mut answer = Answer::default();
        let err = read_answer(&failed, RTM_NEWTFILTER, &mut answer).expect_err("EINVAL");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));

        // NLMSG_DONE with errno 0 is a complete dump.
        let mut ok = header(20, NLMSG_DONE);
        ok.extend_from_slice(&0i32.to_ne_bytes());
        let mut answer = Answer::default();
        read_answer(&ok, RTM_NEWTFILTER, &mut answer).expect("errno 0");
        assert_eq!(counted(answer).expect("complete"), 0);

        // Any message flagged NLM_F_DUMP_INTR makes the whole dump untrustworthy.
        let mut interrupted = header(16, NLMSG_DONE);
        interrupted[6..8].copy_from_slice(&NLM_F_DUMP_INTR.to_ne_bytes());
        let mut answer = Answer::default();
        read_answer(&interrupted, RTM_NEWTFILTER, &mut answer).expect("parsed");
        assert!(answer.done && answer.interrupted, "{answer:?}");
        assert!(counted(answer).is_err());
    }
}
