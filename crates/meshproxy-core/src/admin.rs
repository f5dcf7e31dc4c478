//! The admin listener: `/live`, `/ready` (503 while starting or draining), `/metrics`
//! (Prometheus text), `/config` (the active config as JSON), `/endpoints` (each service's
//! endpoints with their health, as JSON) and `/identity` (the mesh identity in force, as JSON). It never shares a port or a
//! runtime budget with the data path beyond what a scrape costs.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::body::ResponseBody;
use crate::server::EndpointStats;
use crate::state::Shared;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, &req)) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {}
            }
        });
    }
}

fn route(shared: &Shared, req: &Request<Incoming>) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into(), "text/plain");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into(), "text/plain"),
        "/ready" => {
            if shared.is_ready() {
                text(StatusCode::OK, "ready\n".into(), "text/plain")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into(), "text/plain")
            }
        }
        "/metrics" => {
            let mut body = shared.metrics().render(&shared.registry().samples());
            crate::metrics::mesh::render(&mut body, shared.snapshot().load().identity.as_deref());
            text(StatusCode::OK, body, "text/plain; version=0.0.4; charset=utf-8")
        }
        "/config" => {
            let snapshot = shared.snapshot().load();
            let body = serde_json::to_string_pretty(&*snapshot.config)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            text(StatusCode::OK, body, "application/json")
        }
        "/endpoints" => text(StatusCode::OK, endpoints_json(shared), "application/json"),
        "/identity" => {
            let json = crate::metrics::mesh::identity_json(shared.snapshot().load().identity.as_deref());
            let body =
                serde_json::to_string_pretty(&json).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            text(StatusCode::OK, body, "application/json")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: /live /ready /metrics /config /endpoints /identity\n".into(),
            "text/plain",
        ),
    }
}

/// `{"services": [{"name", "balancer", "endpoints": [EndpointStats…]}]}`, services by name.
fn endpoints_json(shared: &Shared) -> String {
    let snapshot = shared.snapshot().load();
    let mut services: Vec<_> = snapshot
        .config
        .services
        .iter()
        .filter_map(|s| {
            let backend = snapshot.backends.get(s.name.as_str())?;
            let endpoints: Vec<EndpointStats> =
                backend.endpoints().iter().map(|e| EndpointStats::from(e.sample())).collect();
            Some(serde_json::json!({ "name": s.name, "balancer": s.balancer, "endpoints": endpoints }))
        })
        .collect();
    services.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    serde_json::to_string_pretty(&serde_json::json!({ "services": services }))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::local_owned(Bytes::from(body), None));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
