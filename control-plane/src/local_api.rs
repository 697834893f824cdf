//! The local API: meshctl sends one protobuf `Request` to meshd's Unix socket and reads one
//! `Response` (messages in proto/mesh/v1/local_api.proto, each length-delimited).
//!
//! The client half closes its write side after the request, so the server can read to EOF with a
//! size cap instead of trusting a length from the peer.

use std::{
    io::{self, Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use mesh_proto::{
    Message,
    v1::{Request, Response, request, response},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest request meshd accepts; anything bigger is a client bug or an attack.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "cannot reach meshd at {path}: {source} (is meshd running? for another instance pass \
         --socket or set MESH_SOCKET)"
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error("talking to meshd at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "meshd at {path} sent a response that does not decode ({source}); are meshctl and meshd the same version?"
    )]
    Decode {
        path: PathBuf,
        source: mesh_proto::prost::DecodeError,
    },
    #[error("meshd answered: {0}")]
    Remote(String),
    #[error("meshd at {0} sent an empty response")]
    Empty(PathBuf),
    #[error("another meshd is already serving {0}; stop it, or give this one its own --run-dir")]
    AlreadyServing(PathBuf),
    #[error("preparing the API socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// Sends `request` to the meshd listening on `socket` and returns its answer.
pub fn call(socket: &Path, request: request::Kind) -> Result<response::Kind, ApiError> {
    call_within(socket, request, CLIENT_TIMEOUT)
}

/// [`call`] for a request meshd takes up to `timeout` to answer (a ping).
pub fn call_within(
    socket: &Path,
    request: request::Kind,
    timeout: Duration,
) -> Result<response::Kind, ApiError> {
    let io_err = |source| ApiError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ApiError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_err)?;
    let bytes = Request {
        kind: Some(request),
    }
    .encode_length_delimited_to_vec();
    stream.write_all(&bytes).map_err(io_err)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(io_err)?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).map_err(io_err)?;
    let resp =
        Response::decode_length_delimited(buf.as_slice()).map_err(|source| ApiError::Decode {
            path: socket.to_owned(),
            source,
        })?;
    match resp.kind {
        Some(response::Kind::Error(e)) => Err(ApiError::Remote(e)),
        Some(kind) => Ok(kind),
        None => Err(ApiError::Empty(socket.to_owned())),
    }
}

/// Binds the API socket at `path` (mode 0660: root and the socket's group), replacing a stale
/// socket left by a crashed meshd but refusing to steal one a live meshd still serves.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, ApiError> {
    let bind_err = |source| ApiError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ApiError::AlreadyServing(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    // The socket is born with the umask's mode. Bind it in a fresh directory only we can
    // enter, set its mode there, and only then move it into place: nobody ever finds it at
    // `path` with a looser mode than 0660.
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("meshd.sock");
    let private = private_dir(dir, name).map_err(bind_err)?;
    let staged = private.join(name);
    let bound = (|| {
        let listener = tokio::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound.map_err(bind_err)
}

/// Creates a new directory (mode 0700) beside the socket. `mkdir` fails on anything already
/// there, a symlink included, so a name someone else took is skipped.
fn private_dir(dir: &Path, name: &str) -> io::Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    for attempt in 0..1000u32 {
        let candidate = dir.join(format!(".{name}.{}.{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free private directory name in {}", dir.display()),
    ))
}

/// Serves one connection: reads a request (capped), answers with `handle`'s response.
pub async fn serve_one<F, Fut>(mut stream: tokio::net::UnixStream, handle: F) -> io::Result<()>
where
    F: FnOnce(request::Kind) -> Fut,
    Fut: std::future::Future<Output = response::Kind>,
{
    let mut buf = Vec::new();
    (&mut stream)
        .take(MAX_REQUEST_BYTES + 1)
        .read_to_end(&mut buf)
        .await?;
    let kind = if buf.len() as u64 > MAX_REQUEST_BYTES {
        response::Kind::Error(format!("request larger than {MAX_REQUEST_BYTES} bytes"))
    } else {
        match Request::decode_length_delimited(buf.as_slice()) {
            Ok(Request { kind: Some(k) }) => handle(k).await,
            Ok(Request { kind: None }) => response::Kind::Error(
                "unknown or empty request; is meshctl newer than meshd?".into(),
            ),
            Err(e) => response::Kind::Error(format!("malformed request: {e}")),
        }
    };
    let out = Response { kind: Some(kind) }.encode_length_delimited_to_vec();
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_appears_with_its_final_mode_and_leaves_no_staging_behind() {
        let dir = std::env::temp_dir().join(format!("mesh-api-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Squatters: names the staging directory might take, and a symlink among them.
        std::fs::create_dir(dir.join(format!(".meshd.sock.{}.0", std::process::id()))).unwrap();
        std::os::unix::fs::symlink(
            "/",
            dir.join(format!(".meshd.sock.{}.1", std::process::id())),
        )
        .unwrap();
        let path = dir.join("meshd.sock");
        let _listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let pid = std::process::id();
        assert_eq!(
            left,
            [
                format!(".meshd.sock.{pid}.0"),
                format!(".meshd.sock.{pid}.1"),
                "meshd.sock".to_owned()
            ],
            "only the socket and the squatters"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
