//! `cargo xtask demo`: gatewayd on the example config, XDP on `lo`, some loopback traffic,
//! then `/flows` and `/metrics`; edge TLS termination, re-encrypt, passthrough and an HTTP -> HTTPS
//! redirect shown with curl commands (certificates generated at start, see
//! `demo_tls`); and gatewayd left running until Ctrl-C.

use std::{
    io::{Read, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{demo_tls, workspace_root};

const ADMIN: &str = "127.0.0.1:9901";
/// The example config's Service `echo` points at this address.
const BACKEND: &str = "127.0.0.1:18081";

/// A tiny HTTP/1.1 backend: answers every request with its own name and the path.
fn start_backend() -> anyhow::Result<()> {
    let listener = TcpListener::bind(BACKEND)
        .with_context(|| format!("binding the demo backend on {BACKEND}"))?;
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || serve_backend(stream));
        }
    });
    Ok(())
}

/// The request head and its path, however many segments the head came in (closing with
/// unread bytes would reset the connection instead of ending the response); `None` when
/// the client leaves first.
pub fn read_head(stream: &mut impl Read) -> Option<(String, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&got).into_owned();
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
    Some((request, path))
}

fn serve_backend(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Some((request, path)) = read_head(&mut stream) else {
        return;
    };
    // What the gateway tells the backend about the client's connection.
    let header = |name: &str| {
        request
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let body = format!(
        "{{\"backend\":\"demo-echo\",\"path\":\"{path}\",\"host\":\"{}\",\"x_forwarded_proto\":\"{}\"}}\n",
        header("host"),
        header("x-forwarded-proto")
    );
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// `GET path` over a fresh connection; returns the body.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let addr: SocketAddr = addr.parse().context("address")?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    // One write: `write!` on a socket sends each formatted piece separately.
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET {path} on {addr}: {}",
            head.lines().next().unwrap_or("no response")
        );
    }
    Ok(body.to_owned())
}

fn wait_healthy(child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("gatewayd exited during start-up: {status}");
        }
        if http_get(ADMIN, "/healthz").is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("gatewayd did not answer /healthz on {ADMIN} within 30 s")
}

pub fn demo(gatewayd: &Path, seconds: Option<u64>) -> anyhow::Result<()> {
    let config = workspace_root().join("config/examples/demo.yaml");
    let tls_config = workspace_root().join("config/examples/demo-tls.yaml");
    if http_get(ADMIN, "/healthz").is_ok() {
        bail!(
            "something already answers on the demo's admin address {ADMIN} (a gatewayd from an \
             earlier demo?); stop it first"
        );
    }
    let pki = demo_tls::generate()?;
    start_backend()?;
    demo_tls::start_backend(&pki)?;
    let mut cmd = Command::new(gatewayd);
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--config")
        .arg(&tls_config)
        .arg("--config")
        .arg(&pki.secrets)
        .args(["--admin", ADMIN, "--xdp-iface", "lo"]);
    eprintln!("+ {}", crate::display(&cmd));
    let mut child = cmd.spawn().context("starting gatewayd")?;
    // Ctrl-C reaches the whole foreground process group: gatewayd detaches and exits on it,
    // and this process outlives it (SIGINT only sets a flag here) to check its exit status
    // and remove the demo's files.
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted)
        .context("installing the SIGINT handler")?;
    if let Err(err) = wait_healthy(&mut child) {
        let _ = child.kill();
        return Err(err);
    }

    let result = show(&mut child, &pki, seconds);
    if result.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    demo_tls::cleanup(&pki.dir);
    if result.is_ok() {
        eprintln!("gatewayd stopped (exit 0); removed {}", pki.dir.display());
    }
    result
}

/// Traffic, what the admin API shows of it, the TLS commands; then waits for gatewayd.
fn show(child: &mut Child, pki: &demo_tls::Pki, seconds: Option<u64>) -> anyhow::Result<()> {
    eprintln!("\n== loopback traffic: 20 HTTP requests to the demo backend on {BACKEND}");
    for i in 0..20 {
        http_get(BACKEND, &format!("/demo/{i}"))?;
    }
    // Let the last FIN/ACKs pass through XDP before reading the table.
    thread::sleep(Duration::from_millis(200));

    println!("\n== GET http://{ADMIN}/flows (flows to the backend port)");
    let flows: serde_json::Value =
        serde_json::from_str(&http_get(ADMIN, "/flows")?).unwrap_or_default();
    let backend_port = BACKEND
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u64>().ok());
    let shown: Vec<&serde_json::Value> = flows
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|f| f["dst_port"].as_u64() == backend_port)
                .take(5)
                .collect()
        })
        .unwrap_or_default();
    println!(
        "{}",
        serde_json::to_string_pretty(&shown).unwrap_or_default()
    );
    println!(
        "({} flows in the table; 5 shown)",
        flows.as_array().map_or(0, Vec::len)
    );

    println!("\n== GET http://{ADMIN}/metrics");
    for line in http_get(ADMIN, "/metrics")?
        .lines()
        .filter(|l| !l.starts_with('#'))
    {
        println!("{line}");
    }
    println!("\n== GET http://{ADMIN}/status");
    println!("{}", http_get(ADMIN, "/status")?);

    println!(
        "\n== TLS on 127.0.0.1:{}: edge termination, re-encrypt and passthrough on one port, by SNI \
         (certificates generated in {})",
        demo_tls::TLS_PORT,
        pki.dir.display()
    );
    demo_tls::show(pki)?;

    println!("\ngatewayd is running (admin on http://{ADMIN}). Try:");
    println!("  curl http://{ADMIN}/flows");
    println!("  curl http://{ADMIN}/metrics");
    println!("  curl http://{ADMIN}/status");
    for (_, args) in demo_tls::commands(pki) {
        let line: Vec<String> = args.iter().map(|a| demo_tls::shell_quote(a)).collect();
        println!("  {}", line.join(" "));
    }
    match seconds {
        Some(secs) => {
            println!("stopping in {secs} s");
            thread::sleep(Duration::from_secs(secs));
            crate::run(Command::new("kill").args(["-TERM", &child.id().to_string()]))?;
        }
        None => println!("Ctrl-C stops it."),
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("gatewayd exited with {status}");
    }
    Ok(())
}
