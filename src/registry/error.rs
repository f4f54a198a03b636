//! Errors as the Confluent Schema Registry API reports them: an HTTP status and a body
//! `{"error_code": N, "message": "…"}`, with Confluent's codes so every client maps them the
//! same way it would against Confluent.

use super::compat::Incompatibility;
use crate::config::Compatibility;

/// An error response of the REST API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (HTTP {status}, error code {code})")]
pub struct ApiError {
    /// HTTP status of the response.
    pub status: u16,
    /// Confluent error code (`error_code`), e.g. 40401; the HTTP status for generic errors.
    pub code: u32,
    /// Human-readable message (`message`), worded as Confluent words it.
    pub message: String,
}

impl ApiError {
    /// An error with `status`, Confluent `code` and `message`.
    pub fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 404/40401: the subject does not exist or has no visible version.
    pub fn subject_not_found(subject: &str) -> Self {
        Self::new(404, 40401, format!("Subject '{subject}' not found."))
    }
    /// 404/40402: the subject has no such version.
    pub fn version_not_found(subject: &str, version: u32) -> Self {
        Self::new(
            404,
            40402,
            format!("Version {version} not found for subject '{subject}'."),
        )
    }
    /// 404/40403: no schema has this id, or the subject has no version with this schema.
    pub fn schema_not_found() -> Self {
        Self::new(404, 40403, "Schema not found")
    }
    /// 404/40404: the subject is already soft-deleted; only a permanent delete may follow.
    pub fn subject_soft_deleted(subject: &str) -> Self {
        Self::new(
            404,
            40404,
            format!(
                "Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
            ),
        )
    }
    /// 404/40405: a permanent delete of a subject that was not soft-deleted first.
    pub fn subject_not_soft_deleted(subject: &str) -> Self {
        Self::new(
            404,
            40405,
            format!("Subject '{subject}' was not deleted first before being permanently deleted"),
        )
    }
    /// 404/40406: the version is already soft-deleted; only a permanent delete may follow.
    pub fn version_soft_deleted(subject: &str, version: u32) -> Self {
        Self::new(
            404,
            40406,
            format!("Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"),
        )
    }
    /// 404/40407: a permanent delete of a version that was not soft-deleted first.
    pub fn version_not_soft_deleted(subject: &str, version: u32) -> Self {
        Self::new(
            404,
            40407,
            format!("Subject '{subject}' Version {version} was not deleted first before being permanently deleted"),
        )
    }
    /// 404/40408: the subject has no compatibility level of its own.
    pub fn subject_level_not_configured(subject: &str) -> Self {
        Self::new(
            404,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }
    /// 422/42201: the schema does not parse, is empty, or is not Avro.
    pub fn invalid_schema(message: impl Into<String>) -> Self {
        Self::new(422, 42201, message)
    }
    /// 422/42202: a version that is neither a number in [1, 2^31-1] nor `latest`.
    pub fn invalid_version(version: &str) -> Self {
        Self::new(
            422,
            42202,
            format!("The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""),
        )
    }
    /// 422/42203: a compatibility level Confluent does not define.
    pub fn invalid_compatibility(found: &str) -> Self {
        Self::new(
            422,
            42203,
            format!("Invalid compatibility level {found}. Valid values are NONE, BACKWARD, FORWARD, FULL, BACKWARD_TRANSITIVE, FORWARD_TRANSITIVE and FULL_TRANSITIVE"),
        )
    }
    /// 400: the request is malformed, e.g. its body is not the JSON expected.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, 400, message)
    }
    /// 401: the registry requires HTTP basic authentication and the request had none valid.
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            401,
            "Unauthorized: this registry requires HTTP basic authentication",
        )
    }
    /// 404: no route matches the path.
    pub fn not_found() -> Self {
        Self::new(404, 404, "HTTP 404 Not Found")
    }
    /// 405: the route exists but not for this method.
    pub fn method_not_allowed() -> Self {
        Self::new(405, 405, "HTTP 405 Method Not Allowed")
    }
    /// 500/50001: the schema topic could not be written, or stored data is unreadable.
    pub fn store(message: impl Into<String>) -> Self {
        Self::new(
            500,
            50001,
            format!("Error in the backend data store: {}", message.into()),
        )
    }

    /// 409: the schema breaks `level` against earlier versions; lists every reason.
    pub fn incompatible(
        subject: &str,
        level: Compatibility,
        broken: &[(u32, Incompatibility)],
    ) -> Self {
        Self::new(
            409,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                verbose_messages(level, broken).join(", ")
            ),
        )
    }
}

/// Confluent's verbose compatibility messages, one per incompatibility.
pub fn verbose_messages(level: Compatibility, broken: &[(u32, Incompatibility)]) -> Vec<String> {
    let mut out: Vec<String> = broken
        .iter()
        .map(|(version, i)| {
            format!(
                "{{errorType:'{}', location:'{}', description:'{}', oldSchemaVersion: {version}}}",
                i.kind.as_str(),
                i.location,
                i.message
            )
        })
        .collect();
    if !out.is_empty() {
        out.push(format!("{{compatibility: '{}'}}", level.as_str()));
    }
    out
}
