//! The console's files, built into the binary: nothing is read from disk
//! or fetched from elsewhere at run time.

/// The app shell, served at `/ui/` to a signed-in user.
pub(super) const INDEX_HTML: &str = include_str!("assets/index.html");
/// The sign-in page; `<!--error-->` marks where a refusal is told.
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// The sign-in page, telling `error` if there is one. The texts are ours,
/// never the caller's, but are escaped all the same.
pub(super) fn login_page(error: Option<&str>) -> String {
    let told = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    LOGIN_HTML.replace("<!--error-->", &told)
}

/// A file under `/ui/assets/`: its content type and bytes.
pub(super) fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "style.css" => Some(("text/css; charset=utf-8", STYLE_CSS)),
        _ => None,
    }
}

/// `text` safe inside HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sign-in page has its form and its error slot, and tells an
    /// error escaped.
    #[test]
    fn login_page_tells_the_error() {
        assert!(LOGIN_HTML.contains("<!--error-->"));
        assert!(LOGIN_HTML.contains("action=\"/ui/login\""));
        let page = login_page(Some("no <b>"));
        assert!(page.contains("role=\"alert\">no &lt;b&gt;</p>"), "{page}");
        assert!(!login_page(None).contains("role=\"alert\""));
    }

    /// Nothing in the files is inline script or style, which the CSP
    /// would refuse, or fetched from another origin.
    #[test]
    fn files_need_nothing_the_csp_refuses() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("login.html", LOGIN_HTML),
            ("app.js", APP_JS),
            ("style.css", STYLE_CSS),
        ] {
            // The SVG namespace is a name, not an address anything fetches.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for bad in [
                "http://",
                "https://",
                "style=\"",
                " onclick=",
                "<style",
                "eval(",
            ] {
                assert!(!text.contains(bad), "{name} holds {bad:?}");
            }
        }
        for page in [INDEX_HTML, LOGIN_HTML] {
            assert!(!page.contains("<script>"), "inline script");
        }
    }
}
