//! `gatewayd check` exit codes and messages, and live reload of a running gatewayd:
//! edits show in `/status` quickly; broken input keeps the old configuration serving.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use gateway_tests::{echo::Echo, free_port, gatewayd_bin, http_get, write_config, Gatewayd};
use nix::sys::signal::Signal;

/// A Gateway on a free loopback port and one HTTPRoute attached to it (or, with
/// `parent` naming another Gateway, not attached).
fn gateway_and_route(port: u16, parent: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  namespace: default
spec:
  gatewayClassName: any
  addresses:
  - type: IPAddress
    value: 127.0.0.1
  listeners:
  - name: http
    protocol: HTTP
    port: {port}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
  namespace: default
spec:
  parentRefs:
  - name: {parent}
  rules:
  - backendRefs:
    - name: web
      port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  ports:
  - name: http
    port: 80
    targetPort: 8080
"#
    )
}

/// An EndpointSlice giving Service default/web (port `http`) the endpoint `backend`.
fn web_endpoints(backend: SocketAddr) -> String {
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- name: http\n  port: {}\nendpoints:\n- addresses: ['{}']\n",
        backend.port(),
        backend.ip()
    )
}

/// The same manifests with the HTTPRoute at `metadata.generation` `generation`.
fn with_route_generation(yaml: &str, generation: i64) -> String {
    yaml.replacen(
        "kind: HTTPRoute\nmetadata:\n",
        &format!("kind: HTTPRoute\nmetadata:\n  generation: {generation}\n"),
        1,
    )
}

/// `GET /` through gatewayd's listener on 127.0.0.1:`port`: the status and, for a
/// backend's answer, the echo backend (`pod`) that gave it.
fn get_through(port: u16) -> (u16, Option<String>) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let r = http_get(addr, "/").unwrap_or_else(|e| panic!("GET / on {addr}: {e:#}"));
    let pod = serde_json::from_str::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["pod"].as_str().map(str::to_owned));
    (r.status, pod)
}

/// [`get_through`] until `done` says the answer is the one expected, for up to 5 s; the
/// last answer. `/status` shows a new configuration as soon as it is loaded, the workers
/// get its route table a moment later: a request right after may still meet the old one.
fn get_through_until(
    port: u16,
    done: impl Fn(&(u16, Option<String>)) -> bool,
) -> (u16, Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = get_through(port);
        if done(&answer) || Instant::now() >= deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(gatewayd_bin())
        .arg("check")
        .args(args)
        .output()
        .expect("run gatewayd check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A condition of HTTPRoute default/web's first parent in a `/status` JSON document.
fn route_cond(status: &serde_json::Value, type_: &str) -> Option<serde_json::Value> {
    let items = status["items"].as_array()?;
    let route = items
        .iter()
        .find(|i| i["kind"] == "HTTPRoute" && i["metadata"]["name"] == "web")?;
    route["status"]["parents"][0]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Status and reason of a condition of HTTPRoute default/web's first parent.
fn route_condition(status: &serde_json::Value, type_: &str) -> Option<(String, String)> {
    let cond = route_cond(status, type_)?;
    Some((
        cond["status"].as_str()?.to_owned(),
        cond["reason"].as_str()?.to_owned(),
    ))
}

fn status_json(gw: &Gatewayd) -> serde_json::Value {
    let response = gw.get("/status").expect("GET /status");
    assert_eq!(response.status, 200);
    serde_json::from_str(&response.body).expect("/status is JSON")
}

fn metric(gw: &Gatewayd, name: &str) -> Option<f64> {
    let body = gw.get("/metrics").ok()?.body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `/status` until `pred` holds; returns how long it took.
fn wait_for_status(
    gw: &Gatewayd,
    within: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if pred(&status_json(gw)) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn check_prints_status_yaml_and_exits_zero_for_valid_input_with_bad_references() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(
        dir.path(),
        "gw.yaml",
        &gateway_and_route(free_port(), "gw")
            .replace("name: web\n      port: 80", "name: missing\n      port: 80"),
    );
    let (code, stdout, stderr) = check(&["--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("kind: Gateway"), "{stdout}");
    assert!(stdout.contains("kind: HTTPRoute"), "{stdout}");
    assert!(
        stdout.contains("reason: BackendNotFound"),
        "a bad reference is a status: {stdout}"
    );
    assert!(stdout.contains("observedGeneration: 1"), "{stdout}");
}

#[test]
fn check_exits_one_naming_file_and_line_of_a_yaml_syntax_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ok\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n  labels: [unclosed\n";
    let path = write_config(dir.path(), "broken.yaml", text);
    let (code, _, stderr) = check(&["--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, Some(1), "{stderr}");
    // The parser stops at the end of the file (line 11, column 1); the message points
    // back at the `[` on line 10, column 11, that was never closed.
    let want = format!(
        "{}:11:1: YAML syntax error: did not find expected ',' or ']', while parsing a flow sequence at line 10 column 11",
        path.display()
    );
    assert!(
        stderr.lines().any(|l| l == want),
        "names file, line and column:\n{stderr}\nwanted the line:\n{want}"
    );
}

#[test]
fn check_exits_one_naming_object_and_field_of_a_wrong_type() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = gateway_and_route(18080, "gw").replace("port: 18080", "port: eighty");
    let path = write_config(dir.path(), "gw.yaml", &text);
    let (code, _, stderr) = check(&["--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("gw.yaml:"), "{stderr}");
    assert!(
        stderr.contains("Gateway default/gw"),
        "names the object: {stderr}"
    );
    assert!(
        stderr.contains("spec.listeners[0].port"),
        "names the field: {stderr}"
    );
}

#[test]
fn check_skips_unknown_kinds_with_a_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "{}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n",
        gateway_and_route(18080, "gw")
    );
    let path = write_config(dir.path(), "mixed.yaml", &text);
    let (code, stdout, stderr) = check(&["--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("Deployment"),
        "warns about the skipped kind: {stderr}"
    );
    assert!(stdout.contains("kind: HTTPRoute"));
}

#[test]
fn an_edited_file_shows_in_status_within_a_second_and_broken_yaml_keeps_the_old_config() {
    let backend = Echo::start("web-backend");
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    // The Gateway, the route (attached to `parent`, at `generation`) and its backend.
    let serving = |parent: &str, generation: i64| {
        with_route_generation(&gateway_and_route(port, parent), generation)
            + &web_endpoints(backend.addr)
    };
    let path = write_config(dir.path(), "gw.yaml", &serving("gw", 1));
    let mut gw = Gatewayd::start(&[
        "--config",
        dir.path().to_str().expect("utf-8"),
        "--ebpf",
        "off",
    ])
    .expect("start");
    gw.wait_healthy().expect("healthy");
    assert_eq!(
        route_condition(&status_json(&gw), "Accepted"),
        Some(("True".into(), "Accepted".into()))
    );
    assert_eq!(get_through(port), (200, Some("web-backend".into())));

    // Point the route at a Gateway that does not exist, as its generation 2: the status
    // and the data path must follow.
    std::fs::write(&path, serving("nowhere", 2)).expect("edit config");
    let took = wait_for_status(&gw, Duration::from_secs(3), |s| {
        route_condition(s, "Accepted") == Some(("False".into(), "NoMatchingParent".into()))
    })
    .unwrap_or_else(|| panic!("edit not live: {}", status_json(&gw)));
    eprintln!("edit live after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "a change is live within 1 s, took {took:?}"
    );
    let status = status_json(&gw);
    let accepted = route_cond(&status, "Accepted").expect("Accepted");
    assert_eq!(
        accepted["observedGeneration"], 2,
        "the conditions describe the new generation: {accepted}"
    );
    assert_eq!(
        get_through_until(port, |a| a.0 == 404).0,
        404,
        "no route is attached any more"
    );

    // Back to the Gateway (generation 3): served again.
    std::fs::write(&path, serving("gw", 3)).expect("edit config");
    wait_for_status(&gw, Duration::from_secs(3), |s| {
        route_cond(s, "Accepted")
            .is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == 3)
    })
    .unwrap_or_else(|| panic!("edit not live: {}", status_json(&gw)));
    let served = (200, Some("web-backend".to_owned()));
    assert_eq!(get_through_until(port, |a| *a == served), served);

    // Broken YAML: the previous configuration keeps serving, the error is reported.
    let errors_before = metric(&gw, "gatewayd_config_reload_errors_total").unwrap_or(-1.0);
    let requests_before = backend.requests();
    std::fs::write(&path, "apiVersion: v1\nkind: Service\nmetadata: [oops\n")
        .expect("break config");
    wait_for_status(&gw, Duration::from_secs(3), |s| {
        s.get("lastReloadError").is_some()
    })
    .unwrap_or_else(|| panic!("error not reported: {}", status_json(&gw)));
    let status = status_json(&gw);
    let error = status["lastReloadError"].as_str().unwrap_or_default();
    assert_eq!(
        error,
        format!(
            "{}:4:1: YAML syntax error: did not find expected ',' or ']', while parsing a flow sequence at line 3 column 11",
            path.display()
        ),
        "names the file, line and column"
    );
    let accepted = route_cond(&status, "Accepted").expect("the old route status");
    assert_eq!(
        (&accepted["status"], &accepted["observedGeneration"]),
        (&serde_json::json!("True"), &serde_json::json!(3)),
        "the old configuration's status still shows: {accepted}"
    );
    assert_eq!(
        get_through(port),
        (200, Some("web-backend".into())),
        "the old configuration still routes requests to the backend"
    );
    assert_eq!(backend.requests(), requests_before + 1);
    assert_eq!(
        metric(&gw, "gatewayd_config_reload_errors_total"),
        Some(errors_before + 1.0)
    );
    assert_eq!(
        metric(&gw, "gatewayd_config_last_reload_success"),
        Some(0.0)
    );
    assert_eq!(
        gw.get("/readyz").expect("readyz").status,
        200,
        "still ready on the old config"
    );

    // Fixed again: the error clears and the new content is live.
    std::fs::write(&path, serving("nowhere", 4)).expect("fix config");
    wait_for_status(&gw, Duration::from_secs(3), |s| {
        s.get("lastReloadError").is_none()
            && route_condition(s, "Accepted") == Some(("False".into(), "NoMatchingParent".into()))
    })
    .unwrap_or_else(|| panic!("fix not live: {}", status_json(&gw)));
    assert_eq!(get_through_until(port, |a| a.0 == 404).0, 404);
    assert!(gw.stop(Signal::SIGTERM).expect("stop").success());
}

#[test]
fn a_file_added_to_a_watched_directory_is_loaded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let full = gateway_and_route(port, "gw");
    let (gateway, rest) = full.split_once("---\n").expect("two parts");
    write_config(dir.path(), "10-gateway.yaml", gateway);
    let mut gw = Gatewayd::start(&[
        "--config",
        dir.path().to_str().expect("utf-8"),
        "--ebpf",
        "off",
    ])
    .expect("start");
    gw.wait_healthy().expect("healthy");
    assert_eq!(
        route_condition(&status_json(&gw), "Accepted"),
        None,
        "no route yet"
    );

    // Written elsewhere, then renamed in: what editors and config managers do.
    let staging = tempfile::tempdir_in(dir.path().parent().expect("parent")).expect("staging dir");
    let staged = write_config(staging.path(), "20-route.yaml", rest);
    std::fs::rename(&staged, dir.path().join("20-route.yaml")).expect("rename into place");
    wait_for_status(&gw, Duration::from_secs(3), |s| {
        route_condition(s, "Accepted") == Some(("True".into(), "Accepted".into()))
    })
    .unwrap_or_else(|| panic!("new file not loaded: {}", status_json(&gw)));
    assert!(gw.stop(Signal::SIGTERM).expect("stop").success());
}

#[test]
fn sighup_forces_a_reload() {
    // gatewayd watches the directory of `watched/gw.yaml`. The file is a hard link of
    // `elsewhere/gw.yaml`: writes through that other name change the same content but
    // raise no event in the watched directory, so only SIGHUP can bring them in.
    let dir = tempfile::tempdir().expect("temp dir");
    let (watched, elsewhere) = (dir.path().join("watched"), dir.path().join("elsewhere"));
    std::fs::create_dir(&watched).expect("mkdir");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let port = free_port();
    let original = write_config(&elsewhere, "gw.yaml", &gateway_and_route(port, "gw"));
    let path = watched.join("gw.yaml");
    std::fs::hard_link(&original, &path).expect("hard link");
    let mut gw = Gatewayd::start(&["--config", path.to_str().expect("utf-8"), "--ebpf", "off"])
        .expect("start");
    gw.wait_healthy().expect("healthy");
    assert_eq!(
        route_condition(&status_json(&gw), "Accepted"),
        Some(("True".into(), "Accepted".into()))
    );
    let before = metric(&gw, "gatewayd_config_reloads_total").expect("reload counter");

    std::fs::write(&original, gateway_and_route(port, "nowhere")).expect("edit in place");
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        gateway_and_route(port, "nowhere"),
        "one file, two names"
    );
    // Five debounce periods and more: a watcher that saw the write would have reloaded.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        (
            route_condition(&status_json(&gw), "Accepted"),
            metric(&gw, "gatewayd_config_reloads_total")
        ),
        (Some(("True".into(), "Accepted".into())), Some(before)),
        "the watcher must not see this edit, or the test proves nothing about SIGHUP"
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(gw.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, Signal::SIGHUP).expect("SIGHUP");
    let took = wait_for_status(&gw, Duration::from_secs(3), |s| {
        route_condition(s, "Accepted") == Some(("False".into(), "NoMatchingParent".into()))
    })
    .unwrap_or_else(|| panic!("SIGHUP did not reload the edit: {}", status_json(&gw)));
    assert!(
        took < Duration::from_secs(1),
        "live within 1 s, took {took:?}"
    );
    assert_eq!(
        metric(&gw, "gatewayd_config_reloads_total"),
        Some(before + 1.0)
    );
    assert!(gw.stop(Signal::SIGTERM).expect("stop").success());
}

#[test]
fn run_refuses_to_start_on_ill_formed_input_and_says_where() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), "bad.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: g\nspec:\n  listeners: 5\n");
    let mut gw = Gatewayd::start(&["--config", path.to_str().expect("utf-8"), "--ebpf", "off"])
        .expect("start");
    let status = gw.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1));
    let stderr = gw.stderr();
    assert!(stderr.contains("bad.yaml:"), "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
}
