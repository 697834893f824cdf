//! meshd as Docker's network driver and IPAM driver (`meshd --docker-plugin`): an HTTP/1.1
//! server on a unix socket in Docker's plugin directory, which Docker finds by its name
//! (`mesh.sock`: `--driver mesh --ipam-driver mesh`). The protocol is in [`protocol`]; what
//! the requests do is the agent's (`agent::docker`).

pub mod protocol;

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Result;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;
use protocol::{Call, Parsed};
use serde_json::Value;
use tokio::net::UnixListener;

/// Where Docker looks for plugin sockets; `mesh.sock` makes the driver `mesh`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/mesh.sock";
/// What Docker's plugin client sends and expects.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";
/// Docker's requests are small JSON documents.
const MAX_BODY: usize = 1 << 20;
/// Connections served at once (Docker keeps one or two open).
const MAX_CONNECTIONS: usize = 32;

/// The plugin socket, bound: removed again when dropped.
pub struct Socket {
    pub path: PathBuf,
    listener: Option<UnixListener>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` as the API socket is bound (its directory made, mode 0660 from the start, a
/// stale socket replaced, one another process serves refused).
pub fn bind(path: &Path) -> Result<Socket> {
    let listener = crate::local_api::bind(path).map_err(|e| match e {
        crate::local_api::ApiError::AlreadyServing(p) => anyhow::anyhow!(
            "--docker-plugin: another process (another meshd?) serves {}; stop it, or give \
             this meshd another socket",
            p.display()
        ),
        e => anyhow::Error::from(e).context(format!("--docker-plugin={}", path.display())),
    })?;
    Ok(Socket {
        path: path.to_owned(),
        listener: Some(listener),
    })
}

/// Serves Docker on `socket` until the task is dropped; `handle` does what a [`Call`] asks and
/// answers with the JSON Docker expects, or an error Docker shows its user.
pub async fn serve<F, Fut>(socket: &mut Socket, handle: F)
where
    F: Fn(Call) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, String>> + Send + 'static,
{
    let listener = socket.listener.take().expect("served once");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting on the Docker plugin socket");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("too many Docker plugin connections; closing one");
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(answer(req, handle).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "a Docker plugin connection");
            }
        });
    }
}

async fn answer<F, Fut>(req: Request<hyper::body::Incoming>, handle: F) -> Response<Full<Bytes>>
where
    F: Fn(Call) -> Fut,
    Fut: std::future::Future<Output = Result<Value, String>>,
{
    let path = req.uri().path().to_owned();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(Err(format!("{path}: reading the request: {e}"))),
    };
    let result = match protocol::parse(&path, &body) {
        Ok(Parsed::Answer(v)) => Ok(v),
        Ok(Parsed::Call(call)) => {
            tracing::debug!(?call, "Docker plugin request");
            handle(call).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        tracing::info!(request = path, error = e, "refused a Docker plugin request");
    }
    reply(result)
}

fn reply(result: Result<Value, String>) -> Response<Full<Bytes>> {
    let (status, body) = match result {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            protocol::error_answer(&e),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}
