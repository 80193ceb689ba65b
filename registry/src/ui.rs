//! The web UI: plain HTML, CSS and JavaScript modules under `registry/ui/`, embedded in the binary
//! so a fresh checkout serves it with no Node toolchain (there is no build step, so nothing built
//! can drift from its sources). The page talks to the same origin's `/v1` API, so a server and a
//! sidecar (which forwards what it does not answer itself) serve the same UI.
//!
//! `/` and `/ui` redirect to `/ui/`; `/ui/assets/<file>` are the files; every other path under
//! `/ui/` is the page itself, whose script routes by the path (`/ui/dc1/services/web`).

use bytes::Bytes;
use warp::http::{header, HeaderValue, Response, StatusCode};
use warp::Filter;

/// The page every `/ui/...` path answers with.
const INDEX: &[u8] = include_bytes!("../ui/index.html");

/// `(file name, content type, contents)` for every file of `registry/ui/assets/` (a test checks
/// the list against the directory).
pub const ASSETS: &[(&str, &str, &[u8])] = &[
    ("style.css", "text/css; charset=utf-8", include_bytes!("../ui/assets/style.css")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../ui/assets/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_bytes!("../ui/assets/api.js")),
    ("shell.js", "text/javascript; charset=utf-8", include_bytes!("../ui/assets/shell.js")),
    ("dom.js", "text/javascript; charset=utf-8", include_bytes!("../ui/assets/dom.js")),
    ("catalog.js", "text/javascript; charset=utf-8", include_bytes!("../ui/assets/catalog.js")),
    ("kv.js", "text/javascript; charset=utf-8", include_bytes!("../ui/assets/kv.js")),
    ("acl.js", "text/javascript; charset=utf-8", include_bytes!("../ui/assets/acl.js")),
    ("servers.js", "text/javascript; charset=utf-8", include_bytes!("../ui/assets/servers.js")),
    ("favicon.svg", "image/svg+xml", include_bytes!("../ui/assets/favicon.svg")),
];

/// Scripts and styles only from this origin, no framing: the page shows data anyone could
/// register (service names, KV values), so nothing in it may run as code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// What a GET of `path` answers, or `None` when the path is not the UI's (the API answers it).
pub fn answer(path: &str) -> Option<Response<Bytes>> {
    match path {
        "/" | "/ui" => Some(redirect("/ui/")),
        _ => {
            let rest = path.strip_prefix("/ui/")?;
            Some(match rest.strip_prefix("assets/") {
                Some(name) => match ASSETS.iter().find(|(n, _, _)| *n == name) {
                    Some((_, kind, body)) => file(kind, body),
                    None => {
                        let mut r = Response::new(Bytes::from_static(b"No such file in the UI"));
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        r
                    }
                },
                None => file("text/html; charset=utf-8", INDEX),
            })
        }
    }
}

fn redirect(to: &'static str) -> Response<Bytes> {
    let mut r = Response::new(Bytes::new());
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

fn file(kind: &'static str, body: &'static [u8]) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from_static(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // The files change with the binary; revalidating costs nothing on the servers' own port.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// The warp filter: GETs of the UI's paths; anything else is rejected for the API's routes.
pub fn routes() -> impl Filter<Extract = (Response<Bytes>,), Error = warp::Rejection> + Clone {
    warp::get()
        .and(warp::path::full())
        .and_then(|path: warp::path::FullPath| async move { answer(path.as_str()).ok_or_else(warp::reject::not_found) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_and_ui_redirect_to_the_page_and_every_ui_path_is_the_page() {
        for path in ["/", "/ui"] {
            let r = answer(path).expect("a UI path");
            assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
            assert_eq!(r.headers()[header::LOCATION], "/ui/");
        }
        for path in ["/ui/", "/ui/dc1/services", "/ui/dc1/kv/app/config/"] {
            let r = answer(path).expect("a UI path");
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
            assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .is_ok_and(|c| c.contains("script-src 'self'")));
        }
        assert!(answer("/v1/kv/x").is_none());
        assert!(answer("/uix").is_none());
        let r = answer("/ui/assets/app.js").expect("a UI path");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(answer("/ui/assets/nope.js").expect("a UI path").status(), StatusCode::NOT_FOUND);
    }

    /// A file added to `registry/ui/assets/` but not to `ASSETS` would be a 404 in the page.
    #[test]
    fn every_file_of_the_assets_directory_is_served() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/assets");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("registry/ui/assets")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let mut listed: Vec<String> = ASSETS.iter().map(|(n, _, _)| n.to_string()).collect();
        on_disk.sort();
        listed.sort();
        assert_eq!(on_disk, listed);
        // Every module the page imports is one of them.
        let index = String::from_utf8_lossy(INDEX);
        for (name, _, body) in ASSETS {
            let text = String::from_utf8_lossy(body);
            for import in text.split("from \"./").skip(1).chain(index.split("/ui/assets/").skip(1)) {
                let file = import.split(['"', '\'']).next().unwrap_or_default();
                assert!(ASSETS.iter().any(|(n, _, _)| *n == file), "{name} refers to {file}, which is not served");
            }
        }
    }

    /// The budget: under 300 KiB gzipped, all files together.
    #[cfg(feature = "server")]
    #[test]
    fn the_whole_ui_is_small_once_gzipped() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for body in ASSETS.iter().map(|(_, _, b)| *b).chain([INDEX]) {
            gz.write_all(body).expect("in memory");
        }
        let size = gz.finish().expect("in memory").len();
        assert!(size < 300 * 1024, "the UI is {size} bytes gzipped");
    }
}
