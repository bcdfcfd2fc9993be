//! `Status` objects, worded as a real API server words them.

use serde_json::{json, Value};

/// The identity the fake pretends the client authenticated as.
pub const USER: &str = "system:serviceaccount:netprof-system:netprof-orchestrator";

pub fn failure(code: u16, reason: &str, message: &str, details: Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    })
}

/// 403 as RBAC answers it.
pub fn forbidden(verb: &str, resource: &str, name: Option<&str>, namespace: Option<&str>) -> Value {
    let kind = resource.split('/').next().unwrap_or(resource);
    let object = match name {
        Some(name) => format!("{kind} \"{name}\""),
        None => kind.to_owned(),
    };
    let scope = match namespace {
        None => "at the cluster scope".to_owned(),
        Some(ns) => format!("in the namespace \"{ns}\""),
    };
    let group = if resource == "networkpolicies" {
        "networking.k8s.io"
    } else {
        ""
    };
    let message = format!("{object} is forbidden: User \"{USER}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}");
    let mut details = json!({"kind": kind});
    if let Some(name) = name {
        details["name"] = json!(name);
    }
    failure(403, "Forbidden", &message, details)
}

pub fn not_found(kind: &str, name: &str) -> Value {
    failure(
        404,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
        json!({"name": name, "kind": kind}),
    )
}

pub fn no_route() -> Value {
    failure(
        404,
        "NotFound",
        "the server could not find the requested resource",
        json!({}),
    )
}

pub fn already_exists(kind: &str, name: &str) -> Value {
    failure(
        409,
        "AlreadyExists",
        &format!("{kind} \"{name}\" already exists"),
        json!({"name": name, "kind": kind}),
    )
}

pub fn bad_request(message: &str) -> Value {
    failure(400, "BadRequest", message, json!({}))
}

/// The exec status channel's document when the command exited 0.
pub fn exec_success() -> Value {
    json!({"metadata": {}, "status": "Success"})
}

/// ... when it exited with `code`.
pub fn exec_exit(command: &[String], code: i32) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// ... when the runtime could not start it.
pub fn exec_not_run(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"})
}
