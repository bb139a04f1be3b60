//! `BPF_PROG_TEST_RUN` for `sk_lookup` programs, which aya does not wrap: the tests and
//! the benches run `sk_lookup_steer` on crafted lookup contexts through this.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `struct bpf_sk_lookup` (uapi/linux/bpf.h), 72 bytes: the context a lookup program sees.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SkLookupCtx {
    pub cookie: u64,
    pub family: u32,
    pub protocol: u32,
    pub remote_ip4: u32,
    pub remote_ip6: [u32; 4],
    pub remote_port: u16,
    pub _pad: u16,
    pub local_ip4: u32,
    pub local_ip6: [u32; 4],
    pub local_port: u32,
    pub ingress_ifindex: u32,
    pub _tail: u32,
}

const _: () = assert!(size_of::<SkLookupCtx>() == 72);

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `enum bpf_cmd`: `BPF_PROG_TEST_RUN`.
const BPF_PROG_TEST_RUN: nix::libc::c_long = 10;

/// What one `BPF_PROG_TEST_RUN` of a lookup program gave.
#[derive(Clone, Copy, Debug)]
pub struct SkLookupRun {
    /// The program's verdict (`SK_PASS` 1, `SK_DROP` 0).
    pub retval: u32,
    /// Average nanoseconds per run.
    pub duration_ns: u32,
    /// The context after the run (`cookie`: the socket assigned, 0 for none).
    pub out: SkLookupCtx,
}

/// Runs the loaded `sk_lookup` program `program` on `ctx`, `repeat` times.
pub fn sk_lookup_test_run(
    program: BorrowedFd<'_>,
    ctx: &SkLookupCtx,
    repeat: u32,
) -> io::Result<SkLookupRun> {
    let mut out = SkLookupCtx::default();
    let prog_fd = u32::try_from(program.as_raw_fd()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut attr = TestAttr {
        prog_fd,
        repeat,
        ctx_size_in: size_of::<SkLookupCtx>() as u32,
        ctx_size_out: size_of::<SkLookupCtx>() as u32,
        ctx_in: std::ptr::from_ref(ctx) as u64,
        ctx_out: (&raw mut out) as u64,
        ..TestAttr::default()
    };
    // SAFETY: BPF_PROG_TEST_RUN with a `bpf_attr` prefix of the right layout whose
    // pointers describe `ctx` and `out`, both alive and of the given sizes for the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            size_of::<TestAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(SkLookupRun {
        retval: attr.retval,
        duration_ns: attr.duration,
        out,
    })
}
