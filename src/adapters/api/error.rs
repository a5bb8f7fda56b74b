//! The API's one error shape, `{"error": {"code", "message",
//! "diagnostics"?}}`: how each failure maps to a status and a code, and
//! how internal failures are logged instead of shown.

use super::*;

/// Every error the API returns.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) diagnostics: Option<Vec<DiagnosticJson>>,
    /// Another instance's REST API that has the answer.
    pub(super) owner: Option<String>,
    /// The `Location` header: the same request at `owner`.
    pub(super) location: Option<String>,
}

/// The body of every error response.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// See [`ErrorBody`].
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`unauthorized`, `not_found`,
    /// `invalid_rules`, `bad_request`, `payload_too_large`, `conflict`, …).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// For rules that do not compile: every error, with its position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<Vec<DiagnosticJson>>,
    /// For a key held by another instance (`elsewhere`): that instance's
    /// REST API; the `Location` header has the same request there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// One rule error.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DiagnosticJson {
    /// File (as the rules name it).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            diagnostics: None,
            owner: None,
            location: None,
        }
    }

    /// A failure inside tripline or a system behind it: the detail (paths,
    /// broker or store errors) goes to the log under an incident id, and
    /// the client gets `public` and that id.
    pub(super) fn internal(
        status: StatusCode,
        code: &'static str,
        public: &str,
        detail: impl std::fmt::Display,
    ) -> ApiError {
        let incident = format!("{:016x}", fastrand::u64(..));
        tracing::error!(%incident, "{public}: {detail}");
        ApiError::new(
            status,
            code,
            format!("{public} (incident {incident} in the service's log)"),
        )
    }

    pub(super) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(super) fn rules(e: RuleChangeError) -> ApiError {
        match e {
            RuleChangeError::Invalid(CompileError::Rules(d)) => {
                let diagnostics: Vec<DiagnosticJson> = d
                    .errors
                    .iter()
                    .map(|e| {
                        let (line, column) = d.sources.line_col(e.span.file, e.span.start);
                        DiagnosticJson {
                            file: d.sources.get(e.span.file).name.clone(),
                            line,
                            column,
                            message: e.message.clone(),
                            hint: e.hint.clone(),
                        }
                    })
                    .collect();
                ApiError {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    code: "invalid_rules",
                    message: format!("the rules do not compile: {} error(s)", diagnostics.len()),
                    diagnostics: Some(diagnostics),
                    owner: None,
                    location: None,
                }
            }
            RuleChangeError::Invalid(CompileError::Io(e)) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_rules",
                e.join("; "),
            ),
            RuleChangeError::Mismatch(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_rules", m)
            }
            RuleChangeError::Shared(m) | RuleChangeError::Conflict(m) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", m)
            }
            RuleChangeError::NotFound(n) => ApiError::not_found(format!("no rule `{n}`")),
            RuleChangeError::NoModel(n) => ApiError::not_found(format!("no model `{n}`")),
            RuleChangeError::Io(m) => ApiError::internal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the rule files could not be written",
                m,
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let location = self.location;
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                diagnostics: self.diagnostics,
                owner: self.owner,
            },
        };
        let mut r = (self.status, Json(body)).into_response();
        if let Some(l) = location.and_then(|l| header::HeaderValue::from_str(&l).ok()) {
            r.headers_mut().insert(header::LOCATION, l);
        }
        if retry {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

pub(super) fn rejection(status: StatusCode, text: String) -> ApiError {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "bad_request",
    };
    ApiError::new(status, code, text)
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        rejection(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        rejection(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl From<StringRejection> for ApiError {
    fn from(r: StringRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}
