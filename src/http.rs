//! Plain HTTP answers on the WebSocket port: the browser pages embedded in the
//! binary, and 404 for anything else.

use crate::handshake::status_text;

const INDEX_HTML: &[u8] = include_bytes!("../clients/index.html");
const ECHO_HTML: &[u8] = include_bytes!("../clients/echo.html");

/// An embedded page by request path (the query string is ignored).
pub fn page(path: &str) -> Option<&'static [u8]> {
    let path = path.split('?').next().unwrap_or_default();
    match path {
        "/" | "/index.html" => Some(INDEX_HTML),
        "/echo" | "/echo.html" => Some(ECHO_HTML),
        _ => None,
    }
}

/// A complete response with `Connection: close`.
pub fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        status_text(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn not_found() -> Vec<u8> {
    response(404, "text/plain; charset=utf-8", b"not found\n")
}

/// The answer to a plain GET.
pub fn answer(path: &str) -> Vec<u8> {
    match page(path) {
        Some(html) => response(200, "text/html; charset=utf-8", html),
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
        assert!(root.ends_with(std::str::from_utf8(INDEX_HTML).unwrap()));
        assert!(String::from_utf8(answer("/nope")).unwrap().starts_with("HTTP/1.1 404 Not Found\r\n"));
    }
}
