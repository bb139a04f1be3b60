//! The admin HTTP server (`--admin`): `/healthz`, `/readyz`, `/status`, `/metrics`, `/flows`,
//! `/workers`, and `POST /workers/{n}/drain` / `/undrain`.
//!
//! Plain HTTP/1.1 on its own task; it reads the shared [`State`] and never blocks the
//! data path (map walks run on the blocking pool).

mod metrics;

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::{
    drain::{self, DrainError},
    ebpf::{DrainRefused, FlowQuery},
    state::State,
};

type Body = Full<Bytes>;

/// Binds the admin address. Separate from [`serve`] so that a bind failure stops start-up.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves admin requests until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                warn!(error = %err, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            if let Err(err) = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %err, "admin connection ended");
            }
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(err) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("encoding JSON failed: {err}\n"),
        ),
    }
}

/// `POST /workers/{n}/drain` and `/workers/{n}/undrain`: `Some((n, draining))`.
fn drain_request(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix("/workers/")?;
    let (worker, action) = rest.split_once('/')?;
    match action {
        "drain" => Some((worker, true)),
        "undrain" => Some((worker, false)),
        _ => None,
    }
}

async fn drain_worker(state: &Arc<State>, worker: &str, draining: bool) -> Response<Body> {
    let text = "text/plain; charset=utf-8";
    let Ok(worker) = worker.parse::<usize>() else {
        return respond(
            StatusCode::NOT_FOUND,
            text,
            format!("no worker {worker:?}\n"),
        );
    };
    let state = state.clone();
    match tokio::task::spawn_blocking(move || drain::set(&state, worker, draining)).await {
        Ok(Ok(report)) => json(StatusCode::OK, &report),
        Ok(Err(err)) => {
            let status = match &err {
                DrainError::NoSuchWorker { .. } => StatusCode::NOT_FOUND,
                DrainError::NoDataplane
                | DrainError::Refused(DrainRefused::LastWorker { .. })
                | DrainError::Refused(DrainRefused::Unavailable { .. }) => StatusCode::CONFLICT,
                DrainError::Refused(DrainRefused::Map(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            respond(status, text, format!("{err}\n"))
        }
        Err(err) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            text,
            format!("draining failed: {err}\n"),
        ),
    }
}

async fn route(req: Request<Incoming>, state: &Arc<State>) -> Response<Body> {
    if req.method() == Method::POST {
        return match drain_request(req.uri().path()) {
            Some((worker, draining)) => drain_worker(state, worker, draining).await,
            None => respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: POST /workers/{n}/drain or /workers/{n}/undrain\n",
            ),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD (and POST /workers/{n}/drain|undrain)\n",
        );
    }
    match req.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
        "/readyz" => match state.not_ready_reason() {
            None => respond(StatusCode::OK, "text/plain; charset=utf-8", "ready\n"),
            Some(reason) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("not ready: {reason}\n"),
            ),
        },
        "/status" => json(StatusCode::OK, &state.status_report()),
        "/workers" => json(StatusCode::OK, &drain::report(state)),
        "/metrics" => {
            let state = state.clone();
            match tokio::task::spawn_blocking(move || metrics::render(&state)).await {
                Ok(text) => respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    text,
                ),
                Err(err) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    format!("rendering metrics failed: {err}\n"),
                ),
            }
        }
        "/flows" => {
            // ?protocol=&addr=&port=&listener=&top=N (see ebpf::FlowQuery).
            let query = match FlowQuery::parse(req.uri().query().unwrap_or_default()) {
                Ok(query) => query,
                Err(err) => {
                    return respond(
                        StatusCode::BAD_REQUEST,
                        "text/plain; charset=utf-8",
                        format!("{err}\n"),
                    )
                }
            };
            let state = state.clone();
            match tokio::task::spawn_blocking(move || query.apply(state.flows())).await {
                Ok(flows) => json(StatusCode::OK, &flows),
                Err(err) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    format!("reading flows failed: {err}\n"),
                ),
            }
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /healthz /readyz /status /metrics /flows /workers\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_paths_name_the_worker_and_the_action() {
        assert_eq!(drain_request("/workers/3/drain"), Some(("3", true)));
        assert_eq!(drain_request("/workers/0/undrain"), Some(("0", false)));
        assert_eq!(drain_request("/workers/3"), None);
        assert_eq!(drain_request("/workers/3/stop"), None);
        assert_eq!(drain_request("/flows"), None);
    }
}
