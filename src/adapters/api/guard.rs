//! What every request passes before its handler: request telemetry, the
//! bearer token for reads and writes, the same-site checks (`Host`,
//! `Origin`, `Sec-Fetch-Site`) against cross-site requests and DNS
//! rebinding, and the JSON answers for unknown routes and methods.

use super::*;

/// Times every routed request and, when spans are exported, runs it in a
/// span named by its route.
pub(super) async fn observe(path: Option<MatchedPath>, req: Request, next: Next) -> Response {
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = path.as_ref().map_or("(unmatched)", MatchedPath::as_str);
    let response = if crate::telemetry::tracing_enabled() {
        let span = tracing::info_span!(
            "tripline.api",
            http.request.method = %method,
            http.route = route,
        );
        tracing::Instrument::instrument(next.run(req), span).await
    } else {
        next.run(req).await
    };
    ApiRequest {
        method: method.as_str(),
        route,
        status: response.status().as_u16(),
        duration: started.elapsed(),
    }
    .emit();
    response
}

/// Checks the bearer token of a read route, unless reads are open.
pub(super) async fn authorize_read(
    State(s): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    if !s.0.config.open_reads
        && let Err(e) = check_token(&s.0.config, req.headers(), false)
    {
        return e.into_response();
    }
    next.run(req).await
}

/// Checks the bearer token of a write route (rule changes, and validation,
/// which compiles what it is sent): always, and refused when no token is
/// configured. Which routes write is decided where they are routed, never
/// from the request's path or method.
pub(super) async fn authorize_write(
    State(s): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    if let Err(e) = check_token(&s.0.config, req.headers(), true) {
        return e.into_response();
    }
    next.run(req).await
}

/// Refuses requests a browser page of another site could have sent: a
/// `Host` that is not this server's (DNS rebinding: a page whose domain
/// resolves to this address names its own domain), and a request with a
/// cross-site `Origin` or `Sec-Fetch-Site` other than a plain read (a
/// `no-cors` POST is sent, only its answer hidden). Clients other than
/// browsers send neither header.
pub(super) async fn same_site(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let forbidden = |m: String| ApiError::new(StatusCode::FORBIDDEN, "forbidden", m);
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(host) = host
        && !host_allowed(host, &s.0.config.allowed_hosts)
    {
        return forbidden(format!(
            "requests to host `{host}` are refused; add it to api.allowed_hosts if it names this server"
        ))
        .into_response();
    }
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if !read {
        let cross_site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "cross-site" || v == "same-site");
        let foreign_origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|o| {
                let authority = o.split_once("://").map_or(o, |(_, a)| a);
                host != Some(authority)
            });
        if cross_site || foreign_origin {
            return forbidden("cross-site requests are refused".into()).into_response();
        }
    }
    next.run(req).await
}

/// Whether `host` (a `Host` header: name or address, and port) names this
/// server: an IP address, `localhost`, this machine's name, or a name in
/// `allowed`.
pub(super) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split_once(']')
                .is_some_and(|(a, _)| a.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name == crate::adapters::kafka::service::host_name().to_ascii_lowercase()
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
}

pub(super) fn check_token(
    config: &ApiConfig,
    headers: &HeaderMap,
    write: bool,
) -> Result<(), ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let Some(token) = &config.token else {
        return Err(unauthorized(if write {
            "rule changes are disabled: no API token is configured (api.token)"
        } else {
            "reads need a token, and none is configured (api.token)"
        }));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer <token>`"))?;
    use subtle::ConstantTimeEq;
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(unauthorized("wrong token"))
    }
}

pub(super) async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint (see /openapi.json)")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed here (see /openapi.json)",
    )
}
