//! The web client: static files embedded in the binary at compile time and served at `/`
//! (the page) and `/app/...` (its modules, style sheet and icon). No build step: the files
//! in `crates/parlor-server/web/` are served as written.
//!
//! Every response carries a strict Content-Security-Policy (scripts and styles only from
//! this origin, no inline code, no framing) and `X-Content-Type-Options: nosniff`. Files
//! are revalidated on each load (`Cache-Control: no-cache`) against a strong `ETag`, so an
//! upgraded server never mixes old and new modules and an unchanged file costs a `304`.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

// `blob:` for images and video: attachments need the bearer token, so the client fetches
// them and shows them through object URLs.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; \
                   media-src 'self' blob:; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

const JS: &str = "text/javascript; charset=utf-8";

/// Path under `/app/`, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../../web/icon.svg"),
    ),
    ("main.js", JS, include_str!("../../web/main.js")),
    ("api.js", JS, include_str!("../../web/api.js")),
    ("socket.js", JS, include_str!("../../web/socket.js")),
    ("store.js", JS, include_str!("../../web/store.js")),
    ("types.js", JS, include_str!("../../web/types.js")),
    ("util.js", JS, include_str!("../../web/util.js")),
    ("uploads.js", JS, include_str!("../../web/uploads.js")),
    ("media.js", JS, include_str!("../../web/media.js")),
    ("blurhash.js", JS, include_str!("../../web/blurhash.js")),
    ("feed.js", JS, include_str!("../../web/feed.js")),
    ("mutes.js", JS, include_str!("../../web/mutes.js")),
    ("push.js", JS, include_str!("../../web/push.js")),
    (
        "push_display.js",
        JS,
        include_str!("../../web/push_display.js"),
    ),
    // The service worker: the policy allows it as it is, since `worker-src` falls back to
    // `script-src 'self'`.
    ("sw.js", JS, include_str!("../../web/sw.js")),
    ("ui/dom.js", JS, include_str!("../../web/ui/dom.js")),
    ("ui/icons.js", JS, include_str!("../../web/ui/icons.js")),
    ("ui/format.js", JS, include_str!("../../web/ui/format.js")),
    ("ui/auth.js", JS, include_str!("../../web/ui/auth.js")),
    ("ui/sidebar.js", JS, include_str!("../../web/ui/sidebar.js")),
    (
        "ui/conversation.js",
        JS,
        include_str!("../../web/ui/conversation.js"),
    ),
    (
        "ui/messages.js",
        JS,
        include_str!("../../web/ui/messages.js"),
    ),
    ("ui/dialogs.js", JS, include_str!("../../web/ui/dialogs.js")),
    (
        "ui/attachments.js",
        JS,
        include_str!("../../web/ui/attachments.js"),
    ),
    ("ui/tray.js", JS, include_str!("../../web/ui/tray.js")),
    ("ui/details.js", JS, include_str!("../../web/ui/details.js")),
    ("ui/bell.js", JS, include_str!("../../web/ui/bell.js")),
    (
        "ui/usermenu.js",
        JS,
        include_str!("../../web/ui/usermenu.js"),
    ),
    ("ui/mute.js", JS, include_str!("../../web/ui/mute.js")),
    ("ui/app.js", JS, include_str!("../../web/ui/app.js")),
    ("ui/route.js", JS, include_str!("../../web/ui/route.js")),
];

const INDEX: &str = include_str!("../../web/index.html");

/// Strong validators, computed once on first use.
fn etags() -> &'static Vec<String> {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        std::iter::once(INDEX)
            .chain(ASSETS.iter().map(|(_, _, body)| *body))
            .map(|body| {
                let digest = Sha256::digest(body.as_bytes());
                let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

fn serve(
    headers: &HeaderMap,
    content_type: &'static str,
    body: &'static str,
    etag: &str,
) -> Response {
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `GET /`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    serve(&headers, "text/html; charset=utf-8", INDEX, &etags()[0])
}

/// `GET /app/{*path}`: a module, the style sheet or the icon.
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|(name, _, _)| *name == path) {
        Some(i) => {
            let (_, content_type, body) = ASSETS[i];
            serve(&headers, content_type, body, &etags()[i + 1])
        }
        None => {
            let mut response = (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "not found",
            )
                .into_response();
            response.headers_mut().insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_import_is_served() {
        // Each `from './x.js'` / `from '../x.js'` in a module must name an embedded file,
        // otherwise the browser fails to load the app.
        for (name, _, body) in ASSETS.iter().filter(|(n, _, _)| n.ends_with(".js")) {
            let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            for part in body.split("from '").skip(1) {
                let Some((spec, _)) = part.split_once('\'') else {
                    continue;
                };
                let mut segments: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
                for seg in spec.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            segments.pop();
                        }
                        s => segments.push(s),
                    }
                }
                let resolved = segments.join("/");
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == resolved),
                    "{name} imports {spec} ({resolved}), which is not embedded"
                );
            }
        }
    }

    #[test]
    fn index_references_embedded_files() {
        for part in INDEX.split("/app/").skip(1) {
            let Some((file, _)) = part.split_once('"') else {
                continue;
            };
            assert!(
                ASSETS.iter().any(|(n, _, _)| *n == file),
                "index.html references /app/{file}"
            );
        }
    }
}
