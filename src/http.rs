//! Plain HTTP answers on the WebSocket port: the browser pages embedded in the
//! binary, and 404 for anything else.

use crate::handshake::status_text;

const HTML: &str = "text/html; charset=utf-8";
pub const TEXT: &str = "text/plain; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The path of the JavaScript client (clients/js/index.js, an ES module). The chat page
/// imports it from here; a page opened from disk imports it from the server it talks to
/// (browsers load no module from file://), so it is served to any origin.
pub const CLIENT_MODULE: &str = "/mioket-client.js";

/// An embedded file by request path (the query string is ignored): its content type
/// and bytes. Pages refer to the shared script and style relatively, so they also
/// work opened from disk, beside these files in clients/.
pub fn page(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = path.split('?').next().unwrap_or_default();
    match path {
        "/" | "/index.html" => Some((HTML, include_bytes!("../clients/index.html"))),
        "/echo" | "/echo.html" => Some((HTML, include_bytes!("../clients/echo.html"))),
        "/mioket.js" => Some((JS, include_bytes!("../clients/mioket.js"))),
        "/mioket.css" => Some((CSS, include_bytes!("../clients/mioket.css"))),
        "/mioket-client.js" => Some((JS, include_bytes!("../clients/js/index.js"))),
        // The operator console: it asks for the API token itself (clients/dashboard/).
        "/dashboard" | "/dashboard/" => Some((HTML, include_bytes!("../clients/dashboard/index.html"))),
        "/dashboard/dashboard.js" => Some((JS, include_bytes!("../clients/dashboard/dashboard.js"))),
        "/dashboard/dashboard.css" => Some((CSS, include_bytes!("../clients/dashboard/dashboard.css"))),
        "/dashboard/vendor/uPlot.iife.min.js" => {
            Some((JS, include_bytes!("../clients/dashboard/vendor/uPlot.iife.min.js")))
        }
        "/dashboard/vendor/uPlot.min.css" => Some((CSS, include_bytes!("../clients/dashboard/vendor/uPlot.min.css"))),
        _ => None,
    }
}

/// A complete response with `Connection: close`.
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    response_with(status, "", content_type, body)
}

/// A complete response with extra header lines (each ending with CRLF).
pub fn response_with(status: u16, extra_headers: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n{extra_headers}\r\n",
        status_text(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn not_found() -> Vec<u8> {
    response(404, TEXT, b"not found\n")
}

/// The answer to a plain GET.
pub fn answer(path: &str) -> Vec<u8> {
    match page(path) {
        Some((content_type, body)) if path.split('?').next() == Some(CLIENT_MODULE) => {
            response_with(200, "Access-Control-Allow-Origin: *\r\n", content_type, body)
        }
        Some((content_type, body)) => response(200, content_type, body),
        None => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_serves_the_chat_page_and_unknown_paths_404() {
        let root = String::from_utf8(answer("/?ws=x")).unwrap();
        assert!(root.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/html"));
        assert!(root.ends_with(include_str!("../clients/index.html")));
        let script = String::from_utf8(answer("/mioket.js")).unwrap();
        assert!(script.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/javascript"));
        assert!(String::from_utf8(answer("/mioket.css")).unwrap().contains("Content-Type: text/css"));
        assert!(String::from_utf8(answer("/nope")).unwrap().starts_with("HTTP/1.1 404 Not Found\r\n"));
        let console = String::from_utf8(answer("/dashboard")).unwrap();
        assert!(console.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/html"));
        for (path, kind) in [
            ("/dashboard/dashboard.js", "text/javascript"),
            ("/dashboard/vendor/uPlot.iife.min.js", "text/javascript"),
            ("/dashboard/vendor/uPlot.min.css", "text/css"),
        ] {
            assert!(console.contains(path), "{path} is linked");
            assert!(String::from_utf8_lossy(&answer(path)).contains(&format!("Content-Type: {kind}")), "{path}");
        }
    }

    #[test]
    fn the_client_module_is_served_as_javascript_to_any_origin() {
        for path in ["/mioket-client.js", "/mioket-client.js?v=1"] {
            let module = String::from_utf8(answer(path)).unwrap();
            assert!(module.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/javascript; charset=utf-8\r\n"));
            assert!(module.contains("\r\nAccess-Control-Allow-Origin: *\r\n"), "{path}");
            assert!(module.ends_with(include_str!("../clients/js/index.js")));
            assert!(module.contains("export class Mioket"));
        }
        // The pages themselves stay same-origin only.
        assert!(!String::from_utf8(answer("/")).unwrap().contains("Access-Control"));
        assert!(!String::from_utf8(answer("/mioket.js")).unwrap().contains("Access-Control"));
    }
}
