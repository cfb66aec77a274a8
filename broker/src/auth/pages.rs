//! Server-rendered pages: login, refusals, logout. No script, no external resource,
//! and a Content-Security-Policy that allows nothing else.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Forbids every resource type; forms may post only to the portal, and no site may
/// frame a page.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub const NO_ROLE_TEXT: &str = "You are signed in, but your account has no role in Strongroom. Ask an administrator to grant you access.";

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// The product name, which every page title ends with.
pub const PRODUCT_NAME: &str = "Strongroom";

/// Builds a page's document title: "`heading` - Strongroom".
fn document_title(heading: &str) -> String {
    debug_assert!(
        !heading.contains(PRODUCT_NAME),
        "the page heading {heading:?} repeats the product name, which the title adds"
    );
    format!("{heading} - {PRODUCT_NAME}")
}

/// Wraps a body in the page layout and adds the security headers. `heading` names
/// the page without the product name; the document title adds it once.
pub fn page(status: StatusCode, heading: &str, body: &str, extra_head: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">{extra_head}<title>{}</title></head>\n<body><main>\n<h1>{}</h1>\n{body}\n</main></body></html>\n",
        escape(&document_title(heading)),
        escape(heading)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Same-origin requests keep their Referer, which the CSRF check falls back to.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A page with one paragraph and a link back to the login page.
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<p id=\"message\">{}</p>\n<p><a href=\"/auth/login\">Back to sign-in</a></p>",
        escape(text)
    );
    page(status, title, &body, "")
}

/// Sign-in methods and form values shown on the login page.
pub struct LoginPage<'a> {
    pub local: bool,
    pub sso: bool,
    pub next: &'a str,
    pub error: Option<&'a str>,
    pub username: &'a str,
}

pub fn login(status: StatusCode, view: &LoginPage<'_>) -> Response {
    let mut body = String::new();
    if let Some(error) = view.error {
        body.push_str(&format!(
            "<p id=\"error\" role=\"alert\">{}</p>\n",
            escape(error)
        ));
    }
    if view.local {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/auth/login\">\n\
             <input type=\"hidden\" name=\"next\" value=\"{next}\">\n\
             <p><label>Username <input name=\"username\" autocomplete=\"username\" required value=\"{username}\"></label></p>\n\
             <p><label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\n\
             <p><label>Authenticator code <input name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" pattern=\"[0-9]{{6}}\" maxlength=\"6\"></label> (empty at your first sign-in, when you set up the authenticator)</p>\n\
             <p><button type=\"submit\">Sign in</button></p>\n</form>\n",
            next = escape(view.next),
            username = escape(view.username),
        ));
    }
    if view.sso {
        // A link, not a form: `form-action 'self'` would block the redirect to the provider.
        let next: String = url::form_urlencoded::byte_serialize(view.next.as_bytes()).collect();
        body.push_str(&format!(
            "<p><a id=\"sso\" href=\"/auth/oidc/login?next={}\">Sign in with SSO</a></p>\n",
            escape(&next)
        ));
    }
    page(status, "Sign in", &body, "")
}

/// The page the OIDC callback returns after a successful sign-in. It moves on with a
/// meta refresh rather than a redirect, so that the request to `next` starts on the
/// portal's own origin and not in a redirect chain that began at the provider.
pub fn continue_to(next: &str) -> Response {
    let target = escape(next);
    let head = format!("<meta http-equiv=\"refresh\" content=\"0;url={target}\">");
    page(
        StatusCode::OK,
        "Signed in",
        &format!("<p><a href=\"{target}\">Continue</a></p>"),
        &head,
    )
}

/// The TOTP enrolment page: the QR code of the `otpauth://` URI as inline SVG, the
/// secret in base32 for manual entry, and a form for the first code.
pub fn enrol_totp(
    status: StatusCode,
    qr_svg: &str,
    secret_base32: &str,
    error: Option<&str>,
) -> Response {
    // The renderer's output starts with an XML declaration, which HTML does not take.
    let svg = qr_svg.find("<svg").map_or(qr_svg, |start| &qr_svg[start..]);
    let mut body = String::new();
    if let Some(error) = error {
        body.push_str(&format!(
            "<p id=\"error\" role=\"alert\">{}</p>\n",
            escape(error)
        ));
    }
    body.push_str(&format!(
        "<p>Your account needs an authenticator app. Scan this code with it, or enter the key by hand.</p>\n\
         <div id=\"qr\">{svg}</div>\n\
         <p>Key: <code id=\"secret\">{}</code></p>\n\
         <form method=\"post\" action=\"/auth/enrol-totp\">\n\
         <p><label>Code shown by the app <input name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" pattern=\"[0-9]{{6}}\" maxlength=\"6\" required></label></p>\n\
         <p><button type=\"submit\">Confirm</button></p>\n</form>\n",
        escape(secret_base32)
    ));
    page(status, "Set up your authenticator", &body, "")
}

/// Renders the password change page with the reason and the policy's requirements.
pub fn change_password(status: StatusCode, reason: &str, error: Option<&str>) -> Response {
    let mut body = String::new();
    if let Some(error) = error {
        body.push_str(&format!(
            "<p id=\"error\" role=\"alert\">{}</p>\n",
            escape(error)
        ));
    }
    body.push_str(&format!(
        "<p id=\"reason\">{}</p>\n\
         <p>Use at least 12 characters with a lowercase and an uppercase letter, a digit and a symbol, \
         and none of your recent passwords.</p>\n\
         <form method=\"post\" action=\"/auth/change-password\">\n\
         <p><label>New password <input name=\"new_password\" type=\"password\" autocomplete=\"new-password\" minlength=\"12\" required></label></p>\n\
         <p><label>New password again <input name=\"confirm_password\" type=\"password\" autocomplete=\"new-password\" minlength=\"12\" required></label></p>\n\
         <p><button type=\"submit\">Change password</button></p>\n</form>\n",
        escape(reason)
    ));
    page(status, "Choose a new password", &body, "")
}

pub fn logout_form() -> Response {
    page(
        StatusCode::OK,
        "Sign out",
        "<form method=\"post\" action=\"/auth/logout\"><p><button type=\"submit\">Sign out</button></p></form>",
        "",
    )
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
