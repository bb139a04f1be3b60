//! One request, in the order of DESIGN §3: route lookup in the snapshot's table, the
//! rule's filters, the weighted backend pick and its filters, forwarding headers, then the
//! exchange with an endpoint (timeouts, retries, mirrors, Upgrade), and the response
//! filters. Failures are returned as [`ProxyError`]; [`super::error::respond`] answers.

use std::{sync::Arc, time::Duration};

use gateway_config::{
    Backend, HeaderModifier, HttpFilter, HttpMatch, Listener, RequestMirror, Retry, ServicePort,
    Timeouts,
};
use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    http::request::Parts,
    Method, Request, Response, StatusCode, Version,
};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::{
    body::RespBody,
    conn::ConnInfo,
    deadline::{Deadline, Elapsed},
    error::{respond, ProxyError},
    filter, forward, MAX_HEADERS, MAX_HEADER_BLOCK, MAX_URI,
};
use crate::{
    backend_tls::{BackendTlsError, ProfileTls},
    upstream::{Endpoint, Protocol, ReqBody, UpstreamBody, UpstreamError},
    worker::{View, WorkerCtx},
};

/// A mirror copy gives up after this long.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between retries when the rule gives no `backoff`.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(10);

/// The response for `proxy`'s result.
pub fn respond_with(
    result: Result<Response<RespBody>, ProxyError>,
    grpc: bool,
) -> Response<RespBody> {
    match result {
        Ok(resp) => resp,
        Err(err) => respond(&err, grpc),
    }
}

/// What a matched rule (HTTPRoute or GRPCRoute) asks for.
struct Plan<'t> {
    listener: &'t Listener,
    filters: &'t [HttpFilter],
    backends: &'t [Backend],
    total_weight: u32,
    matched: Option<&'t HttpMatch>,
    timeouts: Timeouts,
    retry: Option<&'t Retry>,
    invalid: Option<&'t str>,
    grpc: bool,
}

/// The configuration to serve a request of `conn` with: the newest one, unless it no longer
/// has the connection's bind (then the one the connection was accepted under).
fn view_for(ctx: &WorkerCtx, conn: &ConnInfo) -> Arc<View> {
    match ctx.view() {
        Some(v) if v.table().bind_for(conn.bind).is_some() => v,
        _ => conn.view.clone(),
    }
}

/// One request's route, filters and exchange; [`respond_with`] turns its error into a
/// response. The caller (the connection's service) awaits this future itself.
///
/// The request path is a chain of futures (this, the exchange, the endpoint's send, the
/// HTTP/1.1 exchange), and each layer is built and then moved into its parent: every
/// byte of a layer is copied once per request per level above it. So the chain is kept
/// short and flat: no wrapper layer above this one, timers only where configured
/// ([`Deadline`]), rare paths (Upgrade, retries, connecting) boxed, and `attempt` and
/// `Endpoint::send` plain functions returning their inner future instead of async layers
/// of their own (4.7 KiB per request before, 2.7 KiB after; `docs/benchmarks.md`).
pub async fn proxy(
    ctx: &WorkerCtx,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    grpc: bool,
) -> Result<Response<RespBody>, ProxyError> {
    if req
        .uri()
        .path_and_query()
        .is_some_and(|pq| pq.as_str().len() > MAX_URI)
    {
        return Err(ProxyError::UriTooLong { max: MAX_URI });
    }
    if head_too_large(&req) {
        return Err(ProxyError::HeadersTooLarge);
    }
    let view = view_for(ctx, conn);
    let table = view.table();
    let bind = table.bind_for(conn.bind).ok_or(ProxyError::NoRoute)?;
    if let Some(sni_listener) = conn.sni_listener {
        // No Host at all (HTTP/1.0) names no other listener: routing answers 404.
        let host = forward::request_host(&req).unwrap_or("");
        if !host.is_empty() && misdirected(conn, &view, bind, sni_listener, host) {
            return Err(ProxyError::Misdirected);
        }
    }

    let plan = {
        let host = forward::request_host(&req).unwrap_or("");
        let path = req.uri().path();
        let headers = req.headers();
        let lookup = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let grpc_match = if grpc {
            let (service, method) = forward::grpc_service_method(path);
            table.route_grpc(bind, host, service, method, lookup)
        } else {
            None
        };
        match grpc_match {
            Some(m) => Plan {
                listener: m.listener,
                filters: &m.rule.filters,
                backends: &m.rule.backends,
                total_weight: m.rule.total_weight,
                matched: None,
                timeouts: Timeouts::default(),
                retry: None,
                invalid: m.rule.invalid.as_deref(),
                grpc: true,
            },
            None => {
                let query = req.uri().query().unwrap_or("");
                let m = table
                    .route_http(bind, host, req.method().as_str(), path, query, lookup)
                    .ok_or(ProxyError::NoRoute)?;
                Plan {
                    listener: m.listener,
                    filters: &m.rule.filters,
                    backends: &m.rule.backends,
                    total_weight: m.rule.total_weight,
                    matched: Some(m.matched),
                    timeouts: m.rule.timeouts,
                    retry: m.rule.retry.as_ref(),
                    invalid: m.rule.invalid.as_deref(),
                    grpc: false,
                }
            }
        }
    };
    if let Some(reason) = plan.invalid {
        return Err(ProxyError::InvalidRule {
            reason: reason.into(),
        });
    }

    let upgrade = forward::client_upgrade(&mut req);
    // X-Forwarded-Host and `Forwarded: host=` name the host the client asked for, before
    // any rewrite.
    forward::add_forwarded(&mut req, conn);

    let mut response_mods: Vec<&HeaderModifier> = Vec::new();
    let mut mirrors: Vec<&RequestMirror> = Vec::new();
    if let Some(redirect) = apply_filters(
        plan.filters,
        &mut req,
        &plan,
        conn,
        &mut response_mods,
        &mut mirrors,
    )? {
        return Ok(finish_local(redirect, &response_mods));
    }

    let backend = pick_backend(plan.backends, plan.total_weight).ok_or(ProxyError::NoBackend)?;
    if let Some(redirect) = apply_filters(
        &backend.filters,
        &mut req,
        &plan,
        conn,
        &mut response_mods,
        &mut mirrors,
    )? {
        return Ok(finish_local(redirect, &response_mods));
    }
    let (service, tls) = usable(backend, &view)?;
    // An `Upgrade` goes over HTTP/1.1 whatever the Service speaks (HTTP/2 has none), so
    // its request keeps a Host header.
    let protocol = if upgrade.is_some() {
        Protocol::Http1
    } else {
        protocol_for(service, plan.grpc)
    };

    let (mut parts, body) = req.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
    // Mirrors get the request as it stands after the filters, with a copy of the body.
    let body = if mirrors.is_empty() {
        ReqBody::incoming(body)
    } else {
        spawn_mirrors(ctx, &view, &mirrors, &parts, body, plan.grpc)
    };
    forward::set_target(&mut parts.uri, &mut parts.headers, protocol)?;

    let deadline = plan
        .timeouts
        .request
        .map(|d| tokio::time::Instant::now() + d);
    let target = Target {
        service,
        protocol,
        tls,
    };
    let (resp, backend_at) = Deadline::new(
        deadline,
        exchange(ctx, &target, parts, body, &plan, upgrade),
    )
    .await
    .map_err(|_| ProxyError::RequestTimeout)??;

    let (mut parts, body) = resp.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // The tunnel is set up by `exchange`; hop-by-hop headers are the point here.
        return Ok(Response::from_parts(parts, RespBody::upstream(body)));
    }
    forward::strip_hop_by_hop(&mut parts.headers, false);
    parts.version = Version::default();
    for m in &response_mods {
        filter::modify_headers(&mut parts.headers, m);
    }
    // The body is bounded by whichever comes first: the request's deadline or the
    // backend request's (both cover the whole response).
    let mut body = RespBody::upstream(body);
    let body_at = match (deadline, backend_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(at) = body_at {
        body = body.with_deadline(at);
    }
    Ok(Response::from_parts(parts, body))
}

/// Whether a request on an HTTPS connection names a host that the connection's SNI did
/// not select. Listener ids belong to one table: under the table the connection was
/// accepted with, compare ids; under a newer one, compare the listener the Host selects
/// there with the SNI's listener by Gateway and name (gone or renamed: misdirected, so the
/// client reconnects and gets the new configuration's certificate).
fn misdirected(
    conn: &ConnInfo,
    view: &Arc<View>,
    bind: &gateway_config::Bind,
    sni_listener: gateway_config::ListenerId,
    host: &str,
) -> bool {
    if Arc::ptr_eq(view, &conn.view) {
        return crate::tls::is_misdirected(view.table(), bind, sni_listener, host);
    }
    let Some(accepted) = conn.view.table().listener(sni_listener) else {
        return true;
    };
    view.table()
        .select_listener(bind, Some(host))
        .is_none_or(|l| l.gateway != accepted.gateway || l.name != accepted.name)
}

/// More than [`MAX_HEADERS`] fields, or a head over [`MAX_HEADER_BLOCK`] bytes (counted
/// as HTTP/1.1 would carry it).
fn head_too_large<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    if headers.len() > MAX_HEADERS {
        return true;
    }
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |pq| pq.as_str().len())
        + 12;
    let fields: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    line + fields > MAX_HEADER_BLOCK
}

/// A response the gateway makes itself (redirects), with the response filters seen so far.
fn finish_local(mut resp: Response<RespBody>, mods: &[&HeaderModifier]) -> Response<RespBody> {
    for m in mods {
        filter::modify_headers(resp.headers_mut(), m);
    }
    resp
}

/// Applies request filters in order. Returns a redirect response when a RequestRedirect
/// filter answers the request.
fn apply_filters<'t>(
    filters: &'t [HttpFilter],
    req: &mut Request<Incoming>,
    plan: &Plan<'t>,
    conn: &ConnInfo,
    response_mods: &mut Vec<&'t HeaderModifier>,
    mirrors: &mut Vec<&'t RequestMirror>,
) -> Result<Option<Response<RespBody>>, ProxyError> {
    for f in filters {
        match f {
            HttpFilter::RequestHeaderModifier(m) => filter::modify_headers(req.headers_mut(), m),
            HttpFilter::ResponseHeaderModifier(m) => response_mods.push(m),
            HttpFilter::RequestMirror(m) => mirrors.push(m),
            HttpFilter::UrlRewrite(rw) => filter::rewrite(req, rw, plan.matched)?,
            HttpFilter::RequestRedirect(rd) => {
                let host = forward::request_host(req).unwrap_or("");
                let location = filter::redirect_location(
                    rd,
                    conn.scheme,
                    forward::strip_port(host),
                    plan.listener.port,
                    req.uri(),
                    plan.matched,
                );
                let mut resp = Response::new(RespBody::empty());
                *resp.status_mut() =
                    StatusCode::from_u16(rd.status_code).unwrap_or(StatusCode::FOUND);
                let location =
                    HeaderValue::from_str(&location).map_err(|_| ProxyError::BadRequest {
                        reason: "the redirect location is not a valid header value",
                    })?;
                resp.headers_mut().insert(header::LOCATION, location);
                return Ok(Some(resp));
            }
        }
    }
    Ok(None)
}

thread_local! {
    /// Where this thread's weighted picks are on their sequence ([`next_pick`]).
    static PICKS: std::cell::Cell<u32> = std::cell::Cell::new(fastrand::u32(..));
    /// The same for whether a request is mirrored ([`mirrored`]): a sequence of its own,
    /// so that mirroring does not follow the backend picks of the same requests.
    static MIRROR_PICKS: std::cell::Cell<u32> = std::cell::Cell::new(fastrand::u32(..));
}

/// The next point in `0..total` of a Weyl sequence (steps of 2^32 / golden ratio, from a
/// random start per thread): over any run of picks each backend's share is within a few
/// requests of its weight, where independent random picks stray by the square root of
/// the count (a 70/30 split over 500 requests: +-10 requests for one standard deviation).
fn next_pick(total: u32) -> u32 {
    weyl(&PICKS, 0x9E37_79B9, total)
}

/// Whether this request goes to a mirror of `numerator / denominator`: along a sequence
/// like [`next_pick`]'s, so that any run of requests is mirrored within a few of the
/// fraction.
fn mirrored(numerator: u32, denominator: u32) -> bool {
    // A step of 2^32 (sqrt 2 - 1), not the backend picks' golden-ratio step: with the same
    // step the two sequences would move in lockstep and mirror a fixed slice of one
    // backend's requests.
    denominator != 0
        && (numerator >= denominator || weyl(&MIRROR_PICKS, 0x6A09_E667, denominator) < numerator)
}

/// The next point in `0..total` of `seq`, a Weyl sequence of `step`.
fn weyl(seq: &'static std::thread::LocalKey<std::cell::Cell<u32>>, step: u32, total: u32) -> u32 {
    let x = seq.with(|p| {
        let x = p.get().wrapping_add(step);
        p.set(x);
        x
    });
    // `x / 2^32` scaled to `total`: below `total` by construction.
    u32::try_from((u64::from(x) * u64::from(total)) >> 32).unwrap_or(0)
}

/// Weighted choice among the backendRefs of a rule; weight 0 gets nothing.
fn pick_backend(backends: &[Backend], total_weight: u32) -> Option<&Backend> {
    if total_weight == 0 {
        return None;
    }
    if let [only] = backends {
        return Some(only);
    }
    let mut r = next_pick(total_weight);
    for b in backends {
        if r < b.weight {
            return Some(b);
        }
        r -= b.weight;
    }
    None
}

/// Where a request goes: a Service port, what is spoken to it, and over which TLS.
struct Target<'v> {
    service: &'v ServicePort,
    protocol: Protocol,
    /// `None`: plain TCP (the backend has no BackendTLSPolicy).
    tls: Option<&'v Arc<ProfileTls>>,
}

/// The Service port of a backend and its TLS profile, when it can be used. A backend
/// whose BackendTLSPolicy is invalid, or whose TLS config could not be built, fails
/// closed: never plaintext.
fn usable<'v>(
    backend: &'v Backend,
    view: &'v View,
) -> Result<(&'v ServicePort, Option<&'v Arc<ProfileTls>>), ProxyError> {
    let service = backend
        .target
        .as_ref()
        .map_err(|reason| ProxyError::UnresolvedBackend {
            backend: backend.name.to_string(),
            reason: *reason,
        })?;
    match view.backend_tls().resolve(&backend.tls) {
        Ok(tls) => Ok((service, tls)),
        Err(BackendTlsError::InvalidPolicy) => Err(ProxyError::BackendTlsInvalid {
            backend: backend.name.to_string(),
        }),
        Err(err) => Err(ProxyError::BackendTlsUnavailable {
            backend: backend.name.to_string(),
            reason: err.to_string(),
        }),
    }
}

fn protocol_for(service: &ServicePort, grpc: bool) -> Protocol {
    if grpc || service.app_protocol.as_deref() == Some("kubernetes.io/h2c") {
        Protocol::H2c
    } else {
        Protocol::Http1
    }
}

fn no_endpoints(service: &ServicePort) -> ProxyError {
    ProxyError::NoEndpoints {
        backend: service.service.to_string(),
    }
}

/// Sends the request to an endpoint of `service`, with `timeouts.backendRequest` per attempt
/// and the rule's `retry` when repeating the request is safe (it has no body). An upgrade's
/// answer has no body deadline: the tunnel lives as long as its two ends.
async fn exchange(
    ctx: &WorkerCtx,
    target: &Target<'_>,
    parts: Parts,
    body: ReqBody,
    plan: &Plan<'_>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Answer, ProxyError> {
    // The rare paths are boxed: inline, their states would size every request's future.
    if let Some(client) = upgrade {
        return Box::pin(exchange_upgrade(ctx, target, parts, body, client))
            .await
            .map(|resp| (resp, None));
    }
    let retry = plan
        .retry
        .filter(|r| r.attempts > 0 && http_body::Body::is_end_stream(&body));
    match retry {
        None => {
            // Its own statement: a `?` temporary would stay in the state next to the
            // future being awaited.
            let sent = attempt(ctx, target, Request::from_parts(parts, body), plan)?;
            let at = sent.at();
            attempted(sent.await, at)
        }
        Some(retry) => Box::pin(with_retries(ctx, target, parts, body, plan, retry)).await,
    }
}

/// The rule's `retry`: attempts while the answer is one of its codes and repeating the
/// request is safe: it never reached a backend, or its method is idempotent.
async fn with_retries(
    ctx: &WorkerCtx,
    target: &Target<'_>,
    parts: Parts,
    body: ReqBody,
    plan: &Plan<'_>,
    retry: &Retry,
) -> Result<Answer, ProxyError> {
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    let mut parts = Some(parts);
    let mut body = Some(body);
    for n in 0..=retry.attempts {
        let last = n == retry.attempts;
        let req = match (last, parts.as_ref()) {
            (false, Some(p)) => copy_request(p),
            _ => match (parts.take(), body.take()) {
                (Some(p), Some(b)) => Request::from_parts(p, b),
                _ => break,
            },
        };
        let result = match attempt(ctx, target, req, plan) {
            Ok(sent) => {
                let at = sent.at();
                attempted(sent.await, at)
            }
            Err(err) => Err(err),
        };
        if last {
            return result;
        }
        // A response means the backend had the request: repeated only when the method
        // is idempotent (RFC 9110 §9.2.2), as after any failure once the request was sent.
        let again = match &result {
            Ok((resp, _)) => retry.codes.contains(&resp.status().as_u16()) && idempotent,
            // An endpoint at its connection limit already made the request wait: a retry
            // would only wait again (Envoy does not retry such overflows either).
            Err(ProxyError::Upstream(UpstreamError::PoolFull { .. })) => false,
            // Connection failures and backend timeouts are retried whatever the codes, as
            // the spec's retry describes ("after timing out or receiving a response code
            // configured to be retryable"), when repeating is safe.
            Err(ProxyError::Upstream(e)) => e.request_not_sent() || idempotent,
            Err(ProxyError::BackendTimeout) => idempotent,
            Err(_) => false,
        };
        if !again {
            return result;
        }
        debug!(attempt = n + 1, "retrying");
        drop(result);
        tokio::time::sleep(retry.backoff.unwrap_or(DEFAULT_BACKOFF)).await;
    }
    Err(ProxyError::NoBackend)
}

fn copy_request(p: &Parts) -> Request<ReqBody> {
    let mut req = Request::new(ReqBody::empty());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req
}

/// One try: picks an endpoint now and gives the exchange with it, under
/// `timeouts.backendRequest`, for [`attempted`] (a plain function: see [`proxy`]).
fn attempt(
    ctx: &WorkerCtx,
    target: &Target<'_>,
    req: Request<ReqBody>,
    plan: &Plan<'_>,
) -> Result<
    Deadline<
        impl std::future::Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + use<>,
    >,
    ProxyError,
> {
    let endpoint = ctx
        .upstreams
        .pick(&target.service.endpoints, target.protocol, target.tls)
        .ok_or_else(|| no_endpoints(target.service))?;
    let guard = endpoint.begin();
    let at = plan
        .timeouts
        .backend_request
        .map(|limit| tokio::time::Instant::now() + limit);
    Ok(Deadline::new(at, Endpoint::send(&endpoint, req, guard)))
}

/// A backend's response, and when its body must be whole: the deadline of the attempt
/// that gave it (`timeouts.backendRequest` runs until the full response has been
/// received).
type Answer = (Response<UpstreamBody>, Option<tokio::time::Instant>);

/// What an [`attempt`] under the backend-request deadline `at` gave.
fn attempted(
    out: Result<Result<Response<UpstreamBody>, UpstreamError>, Elapsed>,
    at: Option<tokio::time::Instant>,
) -> Result<Answer, ProxyError> {
    match out {
        Ok(result) => Ok((result?, at)),
        Err(Elapsed) => Err(ProxyError::BackendTimeout),
    }
}

/// `Upgrade` (WebSocket): a dedicated backend connection; on 101 both upgraded streams are
/// spliced.
async fn exchange_upgrade(
    ctx: &WorkerCtx,
    target: &Target<'_>,
    parts: Parts,
    body: ReqBody,
    client: hyper::upgrade::OnUpgrade,
) -> Result<Response<UpstreamBody>, ProxyError> {
    let endpoint = ctx
        .upstreams
        .pick(&target.service.endpoints, Protocol::Http1, target.tls)
        .ok_or_else(|| no_endpoints(target.service))?;
    let guard = endpoint.begin();
    let mut resp = endpoint
        .send_upgrade(Request::from_parts(parts, body), guard)
        .await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let backend = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client, backend) {
                Ok((client, backend)) => {
                    let mut client = TokioIo::new(client);
                    let mut backend = TokioIo::new(backend);
                    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut backend).await
                    {
                        debug!(error = %err, "upgraded connection ended");
                    }
                }
                Err(err) => debug!(error = %err, "upgrade failed"),
            }
        });
    }
    Ok(resp)
}

/// Starts every mirror (fire and forget) and returns the body for the real request, which
/// copies itself to the mirrors as it streams.
fn spawn_mirrors(
    ctx: &WorkerCtx,
    view: &View,
    mirrors: &[&RequestMirror],
    parts: &Parts,
    body: Incoming,
    grpc: bool,
) -> ReqBody {
    let has_body = !http_body::Body::is_end_stream(&body);
    let mut taps = Vec::new();
    for mirror in mirrors {
        if !mirrored(mirror.numerator, mirror.denominator) {
            continue;
        }
        let Ok((service, tls)) = usable(&mirror.backend, view) else {
            continue;
        };
        // A gRPC request's copy goes over HTTP/2 too, as the request itself does.
        let protocol = protocol_for(service, grpc);
        let Some(endpoint) = ctx.upstreams.pick(&service.endpoints, protocol, tls) else {
            continue;
        };
        let mut copy = copy_request(parts);
        let (mut head, copy_body) = copy.into_parts();
        if forward::set_target(&mut head.uri, &mut head.headers, protocol).is_err() {
            continue;
        }
        copy = Request::from_parts(head, copy_body);
        if has_body {
            let (mirror_body, tap) = ReqBody::mirror();
            *copy.body_mut() = mirror_body;
            taps.push(tap);
        }
        let guard = endpoint.begin();
        tokio::spawn(async move {
            match tokio::time::timeout(MIRROR_TIMEOUT, endpoint.send(copy, guard)).await {
                Ok(Ok(resp)) => {
                    // Read the answer to the end so that the connection can be reused.
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                }
                Ok(Err(err)) => debug!(error = %err, "mirror request failed"),
                Err(_) => debug!("mirror request timed out"),
            }
        });
    }
    if taps.is_empty() {
        ReqBody::incoming(body)
    } else {
        ReqBody::tee(body, taps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_config::{BackendTls, ObjectRef};

    fn backend(name: &str, weight: u32) -> Backend {
        Backend {
            name: ObjectRef {
                namespace: "ns".into(),
                name: name.into(),
            },
            weight,
            target: Err(gateway_config::UnresolvedBackend::NotFound),
            tls: BackendTls::None,
            filters: Box::new([]),
        }
    }

    #[test]
    fn weight_zero_backends_get_nothing_and_all_zero_gets_no_backend() {
        let bs = [backend("a", 0), backend("b", 3), backend("c", 0)];
        for _ in 0..200 {
            let b = pick_backend(&bs, 3).expect("a backend");
            assert_eq!(&*b.name.name, "b");
        }
        assert!(pick_backend(&[backend("a", 0)], 0).is_none());
    }

    #[test]
    fn weights_split_traffic_in_proportion() {
        let bs = [backend("a", 70), backend("b", 30)];
        let a = (0..10_000)
            .filter(|_| pick_backend(&bs, 100).is_some_and(|b| &*b.name.name == "a"))
            .count();
        assert!((6_500..7_500).contains(&a), "{a}");
    }

    #[test]
    fn every_run_of_picks_keeps_close_to_the_weights() {
        // Independent random picks would stray by about 10 in 500 (one standard
        // deviation) and by over 25 in about one run of 70; the sequence keeps each run
        // of 100 or 500 picks within a few requests of 70/30/0.
        let bs = [backend("a", 70), backend("b", 30), backend("c", 0)];
        for start in [0u32, 1, 12_345, 0x8000_0000, u32::MAX] {
            PICKS.with(|p| p.set(start));
            for run in [100usize, 500] {
                for _ in 0..20 {
                    let mut counts = [0usize; 3];
                    for _ in 0..run {
                        let b = pick_backend(&bs, 100).expect("a backend");
                        counts[usize::from(b.name.name.as_bytes()[0] - b'a')] += 1;
                    }
                    let want = run * 70 / 100;
                    assert!(counts[0].abs_diff(want) <= 3, "{run}: {counts:?}");
                    assert_eq!(counts[2], 0);
                }
            }
        }
    }

    #[test]
    fn mirrors_take_their_fraction_of_every_run_of_requests() {
        for start in [0u32, 7, 0x8000_0000, u32::MAX] {
            MIRROR_PICKS.with(|p| p.set(start));
            for (num, den) in [(1, 4), (25, 100), (1, 3), (999, 1000)] {
                for run in [100u32, 1000] {
                    let got = (0..run).filter(|_| mirrored(num, den)).count();
                    let want = (run * num / den) as usize;
                    assert!(got.abs_diff(want) <= 3, "{num}/{den} of {run}: {got}");
                }
            }
        }
        assert!((0..100).all(|_| mirrored(100, 100)));
        assert!(
            (0..100).all(|_| mirrored(5, 4)),
            "a fraction over 1 mirrors all"
        );
        assert!((0..100).all(|_| !mirrored(0, 100)));
        assert!(
            (0..100).all(|_| !mirrored(1, 0)),
            "a zero denominator mirrors none"
        );
    }

    #[test]
    fn mirroring_does_not_follow_the_backend_picks() {
        // 50/50 backends and a 50 % mirror: the mirrored requests are spread over both
        // backends, not a fixed slice of one of them.
        let bs = [backend("a", 1), backend("b", 1)];
        for (p, m) in [(0u32, 0u32), (12_345, 0), (0x8000_0000, 77)] {
            PICKS.with(|c| c.set(p));
            MIRROR_PICKS.with(|c| c.set(m));
            let mut mirrored_to = [0usize; 2];
            for _ in 0..1000 {
                let b = pick_backend(&bs, 2).expect("a backend");
                if mirrored(1, 2) {
                    mirrored_to[usize::from(b.name.name.as_bytes()[0] - b'a')] += 1;
                }
            }
            assert!(
                mirrored_to.iter().all(|n| (200..=300).contains(n)),
                "{mirrored_to:?}"
            );
        }
    }
}
