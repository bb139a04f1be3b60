//! Helpers shared by the integration tests in `tests/tests/`: locating and running the real
//! `gatewayd` binary, small HTTP over raw sockets, and network namespaces with veth pairs.

pub mod bpf;
pub mod echo;
pub mod netns;
pub mod reencrypt;
pub mod scenario;
pub mod tls;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// The `gatewayd` binary under test: `$GATEWAYD_BIN` (set by `cargo xtask test`), else the
/// one next to this test executable's directory (`target/<profile>/gatewayd`).
pub fn gatewayd_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("GATEWAYD_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("invariant: a test knows its own executable");
    // target/<profile>/deps/<test> -> target/<profile>/gatewayd
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("gatewayd"))
        .expect("invariant: test executables live in target/<profile>/deps")
}

/// Whether the process runs as root (uid 0).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// An eBPF test calls this first. `true`: go on. `false`: the test prints why it skips.
/// Under `cargo xtask test` as root (`GATEWAYD_REQUIRE_EBPF_TESTS=1`), not being able to run
/// is a failure, never a skip.
pub fn ebpf_tests_can_run(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("GATEWAYD_REQUIRE_EBPF_TESTS").as_deref() == Ok("1") {
        panic!("{test}: eBPF tests are required here but the process is not root");
    }
    eprintln!("SKIPPED {test}: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)");
    false
}

/// A free TCP port on 127.0.0.1 for gatewayd to listen on (bound then released).
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`, 32768-60999 by
/// default): a port from that range, once released, can become the source port of any
/// outgoing connection (a pooled backend connection lives for the whole test) and then
/// gatewayd cannot listen on it. Each test process walks its own slice of 20000-32767,
/// starting from its pid, so parallel tests in one process never get the same port and
/// test processes rarely meet; a port something else holds is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(2_654_435_761)) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let Ok(port) = u16::try_from(FIRST + offset) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{FIRST}-{}", FIRST + SPAN - 1)
}

/// A response as a client sees it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// `GET path` on `addr` over a fresh HTTP/1.1 connection.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    parse_response(&raw)
}

/// Reads `n` HTTP/1.1 responses one after another from `stream` (the answers to
/// pipelined requests), each body framed by its Content-Length or chunked encoding (no
/// trailers); interim (1xx) responses are skipped. Not for answers to HEAD. Bytes read
/// past the `n`th response are dropped: ask for every answer that is on its way in one
/// call.
pub fn read_responses(
    stream: &mut impl std::io::Read,
    n: usize,
) -> anyhow::Result<Vec<HttpResponse>> {
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let (status, head, head_len, framing) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(len) = resp.parse(&buf)? {
                let status = resp.code.context("no status code")?;
                let value = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
                };
                let framing = match (value("transfer-encoding"), value("content-length")) {
                    (Some(te), _) if te.ends_with("chunked") => None,
                    (_, Some(cl)) => Some(cl.parse::<usize>().context("bad content-length")?),
                    // Every response this reads is framed (keep-alive): no body only
                    // where none may be sent.
                    _ if status == 204 || status == 304 || (100..200).contains(&status) => Some(0),
                    _ => bail!(
                        "response {} has no Content-Length and is not chunked",
                        out.len() + 1
                    ),
                };
                let head = String::from_utf8_lossy(&buf[..len]).into_owned();
                break (status, head, len, framing);
            }
            fill(stream, &mut buf, out.len())?;
        };
        buf.drain(..head_len);
        let body = match framing {
            Some(len) => {
                while buf.len() < len {
                    fill(stream, &mut buf, out.len())?;
                }
                buf.drain(..len).collect::<Vec<u8>>()
            }
            None => {
                let mut body = Vec::new();
                loop {
                    let line_end = loop {
                        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                            break i;
                        }
                        fill(stream, &mut buf, out.len())?;
                    };
                    let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
                    let size =
                        usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                            .with_context(|| format!("bad chunk size {size_text:?}"))?;
                    while buf.len() < line_end + 2 + size + 2 {
                        fill(stream, &mut buf, out.len())?;
                    }
                    body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                    if &buf[line_end + 2 + size..line_end + 2 + size + 2] != b"\r\n" {
                        bail!("chunk of {size} bytes not followed by CRLF (trailers are not read)");
                    }
                    buf.drain(..line_end + 2 + size + 2);
                    if size == 0 {
                        break body;
                    }
                }
            }
        };
        if (100..200).contains(&status) {
            // An interim response (100 Continue): the final one follows.
            continue;
        }
        out.push(HttpResponse {
            status,
            head,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(out)
}

fn fill(stream: &mut impl std::io::Read, buf: &mut Vec<u8>, done: usize) -> anyhow::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let k = stream
        .read(&mut chunk)
        .with_context(|| format!("reading response {}", done + 1))?;
    if k == 0 {
        bail!("the connection ended after {done} whole responses");
    }
    buf.extend_from_slice(&chunk[..k]);
    Ok(())
}

pub fn parse_response(raw: &str) -> anyhow::Result<HttpResponse> {
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    Ok(HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// A running `gatewayd`, killed (SIGKILL) if the test ends without stopping it.
pub struct Gatewayd {
    pub child: Child,
    pub admin: SocketAddr,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gatewayd {
    /// Starts `gatewayd run --admin 127.0.0.1:<free> <args>` with stderr to a file.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(Command::new(gatewayd_bin()), args)
    }

    /// Like [`start`](Self::start), with `cmd` as the program (e.g. a wrapper such as
    /// `capsh ... -- -c`) already set up; `gatewayd run` and the args are appended.
    pub fn start_with(mut cmd: Command, args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path)?;
        cmd.arg("run")
            .args(["--admin", &admin.to_string()])
            .args(args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(Self {
            child,
            admin,
            stderr_path,
            _dir: dir,
        })
    }

    /// Waits for `/healthz` to answer 200.
    pub fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("gatewayd exited with {status}: {}", self.stderr());
            }
            if http_get(self.admin, "/healthz").is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("gatewayd did not become healthy: {}", self.stderr())
    }

    pub fn get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        http_get(self.admin, path)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends `signal` and waits (up to 10 s) for the exit status.
    pub fn stop(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, signal)?;
        wait_timeout(&mut self.child, Duration::from_secs(10))
    }

    /// Waits (up to `timeout`) for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        wait_timeout(&mut self.child, timeout)
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Gatewayd {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a command to completion, failing with its stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> anyhow::Result<Output> {
    let output = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// Writes `yaml` to `dir/name` and returns the path.
pub fn write_config(dir: &std::path::Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("invariant: the test's temp dir is writable");
    path
}

/// A configuration with nothing to serve: gatewayd starts, loads it and is ready.
pub const EMPTY_CONFIG: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n";
