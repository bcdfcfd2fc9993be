//! One command in a pod through the exec API (a WebSocket: stdout on channel 1, stderr on 2, the
//! exit status as a `Status` on 3), collected whole with its exit code.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use tokio::io::AsyncReadExt;

use super::error::{api, excerpt};
use super::K8sError;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("did not finish within {secs} s and was abandoned (the pod is deleted at the end of the run)")]
    Timeout { secs: u64 },
    #[error("could not run: {message}")]
    Failed { message: String },
    #[error("exited with {code}{}", stderr_part(stderr))]
    Exit { code: i32, stderr: String },
    #[error("the exec stream ended without an exit status (connection to the API server lost?)")]
    NoStatus,
    #[error("reading its output")]
    Read(#[source] std::io::Error),
    #[error("the exec stream failed")]
    Stream(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn stderr_part(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        " and printed nothing on stderr".to_owned()
    } else {
        format!(": {}", excerpt(stderr))
    }
}

/// What a finished command left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

/// Output buffered between the WebSocket and the readers; large enough for iperf3 -J.
const BUFFER: usize = 1 << 16;

/// Runs `command` in `container` of `pod` and waits (at most `limit`) for its exit.
pub async fn exec(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    command: &[String],
    limit: Duration,
) -> Result<ExecOutput, K8sError> {
    let wrap = |source| K8sError::Exec {
        namespace: pods.namespace().unwrap_or_default().to_owned(),
        pod: pod.to_owned(),
        command: command.join(" "),
        source,
    };
    let params = AttachParams::default()
        .container(container)
        .stdin(false)
        .stdout(true)
        .stderr(true)
        .max_stdout_buf_size(BUFFER)
        .max_stderr_buf_size(BUFFER);
    let work = async {
        // Exec is a WebSocket GET on pods/exec; RBAC checks `create` (and `get` before 1.35).
        let mut process = pods
            .exec(pod, command.to_vec(), &params)
            .await
            .map_err(api(pods, "create", "pods/exec", pod))?;
        let (mut stdout, mut stderr) = (
            process.stdout().expect("stdout requested"),
            process.stderr().expect("stderr requested"),
        );
        let status = process.take_status().expect("status taken once");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        // Both at once: a full stderr buffer must not stall stdout.
        let (read_out, read_err) =
            tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        read_out
            .and(read_err)
            .map_err(|e| wrap(ExecError::Read(e)))?;
        let status = status.await;
        process
            .join()
            .await
            .map_err(|e| wrap(ExecError::Stream(Box::new(e))))?;
        let exit_code = exit_code(status).map_err(wrap)?;
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            exit_code,
        })
    };
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(wrap(ExecError::Timeout {
            secs: limit.as_secs(),
        })),
    }
}

/// The exit code in the status channel's `Status`: `Success`, or `NonZeroExitCode` with the
/// code as the `ExitCode` cause; any other failure means the command did not run.
pub fn exit_code(
    status: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>,
) -> Result<i32, ExecError> {
    let status = status.ok_or(ExecError::NoStatus)?;
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    if status.reason.as_deref() == Some("NonZeroExitCode") {
        let code = status
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|causes| {
                causes
                    .iter()
                    .find(|c| c.reason.as_deref() == Some("ExitCode"))
            })
            .and_then(|c| c.message.as_deref())
            .and_then(|m| m.trim().parse().ok());
        if let Some(code) = code {
            return Ok(code);
        }
    }
    Err(ExecError::Failed {
        message: status
            .message
            .unwrap_or_else(|| format!("{:?}", status.reason)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        json: serde_json::Value,
    ) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status> {
        Some(serde_json::from_value(json).unwrap())
    }

    #[test]
    fn exit_codes_from_the_status_channel() {
        assert_eq!(
            exit_code(status(
                serde_json::json!({"metadata": {}, "status": "Success"})
            ))
            .unwrap(),
            0
        );
        let failed = serde_json::json!({
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code: error executing command [ping], exit code 2",
            "details": {"causes": [{"reason": "ExitCode", "message": "2"}]}
        });
        assert_eq!(exit_code(status(failed)).unwrap(), 2);
        let not_found = serde_json::json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
            "message": "exec: \"ab\": executable file not found in $PATH"});
        assert_eq!(
            exit_code(status(not_found)).unwrap_err().to_string(),
            "could not run: exec: \"ab\": executable file not found in $PATH"
        );
        assert!(matches!(exit_code(None), Err(ExecError::NoStatus)));
    }

    #[test]
    fn exit_errors_quote_stderr() {
        let err = ExecError::Exit {
            code: 2,
            stderr: "ping: connect: Network is unreachable\n".into(),
        };
        assert_eq!(
            err.to_string(),
            "exited with 2: ping: connect: Network is unreachable"
        );
        assert_eq!(
            ExecError::Exit {
                code: 1,
                stderr: String::new()
            }
            .to_string(),
            "exited with 1 and printed nothing on stderr"
        );
    }
}
