//! Finding a Docker container's network namespace: its main process, through the Docker API.

use bollard::{API_DEFAULT_VERSION, Docker, errors::Error};

/// The default Docker API socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Seconds to wait for the Docker daemon.
const TIMEOUT_S: u64 = 10;

/// The pid of running container `id` (an id, a unique start of one, or a name).
pub async fn container_pid(socket: &str, id: &str) -> Result<u32, String> {
    let socket = if socket.is_empty() {
        DEFAULT_SOCKET
    } else {
        socket
    };
    let docker =
        Docker::connect_with_unix(socket, TIMEOUT_S, API_DEFAULT_VERSION).map_err(|e| match e {
            Error::SocketNotFoundError(_) => format!(
                "Docker is not there: no API socket at {socket} (is dockerd running? \
                 --docker-host names another socket)"
            ),
            e => format!("connecting to Docker at {socket}: {e}"),
        })?;
    let c = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| match e {
            Error::DockerResponseServerError {
                status_code: 404, ..
            } => format!("Docker has no container {id:?} (`docker ps`)"),
            e => format!("asking Docker at {socket} about {id:?}: {e}"),
        })?;
    let state = c.state.unwrap_or_default();
    match (state.running, state.pid) {
        (Some(true), Some(pid)) if pid > 0 => Ok(pid as u32),
        _ => Err(format!(
            "container {id:?} is not running: its network namespace exists only while it runs"
        )),
    }
}
