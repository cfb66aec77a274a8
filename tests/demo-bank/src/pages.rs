//! HTML of the demo bank's pages. Every value that reaches a page goes through
//! [`escape`].

use crate::statement::{self, format_cents};

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:60em}\
label{display:block;margin:.6em 0}input{font-size:1.1em}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ccc;padding:.3em;text-align:left}\
td.amount{text-align:right;font-family:monospace}.error{color:#a00}";

/// Escapes text for an HTML element or a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>{title}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        title = escape(title)
    )
}

/// Renders the first login step: username and password.
pub fn login(error: Option<&str>) -> String {
    let error = error
        .map(|text| format!("<p class=\"error\" id=\"error\">{}</p>", escape(text)))
        .unwrap_or_default();
    document(
        "Demo Bank - sign in",
        &format!(
            "<h1>Demo Bank</h1>{error}\
<form method=\"post\" action=\"/login\" id=\"login\">\
<label>Username <input name=\"username\" id=\"username\" autocomplete=\"username\" required></label>\
<label>Password <input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
<button type=\"submit\" id=\"sign-in\">Sign in</button></form>"
        ),
    )
}

/// Renders the second login step: the six-digit code of the authenticator app.
pub fn totp(error: Option<&str>) -> String {
    let error = error
        .map(|text| format!("<p class=\"error\" id=\"error\">{}</p>", escape(text)))
        .unwrap_or_default();
    document(
        "Demo Bank - verification code",
        &format!(
            "<h1>Verification code</h1>{error}\
<form method=\"post\" action=\"/totp\" id=\"totp\">\
<label>Code from your authenticator app <input name=\"code\" id=\"code\" inputmode=\"numeric\" \
autocomplete=\"one-time-code\" pattern=\"[0-9]{{6}}\" required></label>\
<button type=\"submit\" id=\"verify\">Verify</button></form>"
        ),
    )
}

/// Renders the account page: balance, a free-text note field and the long statement.
pub fn account(holder: &str) -> String {
    let transactions = statement::transactions();
    let balance = transactions
        .last()
        .map(|last| format_cents(last.balance_cents))
        .unwrap_or_default();
    let rows: String = transactions
        .iter()
        .map(|t| {
            format!(
                "<tr><td>{}</td><td>{}</td><td class=\"amount\">{}</td><td class=\"amount\">{}</td></tr>",
                escape(&t.date),
                escape(&t.description),
                format_cents(t.amount_cents),
                format_cents(t.balance_cents)
            )
        })
        .collect();
    document(
        "Demo Bank - account overview",
        &format!(
            "<h1 id=\"account-title\">Account overview</h1>\
<p>Account holder: <span id=\"holder\">{holder}</span></p>\
<p>Balance: <strong id=\"balance\">{balance}</strong> EUR</p>\
<p><a href=\"/statement.pdf\" id=\"statement-pdf\">Statement as PDF</a> \
<a href=\"/logout\" id=\"logout\">Sign out</a></p>\
<form method=\"post\" action=\"/note\"><label>Payment note \
<input name=\"note\" id=\"note\" autocomplete=\"off\"></label>\
<button type=\"submit\" id=\"save-note\">Save note</button></form>\
<table id=\"statement\"><thead><tr><th>Date</th><th>Description</th><th>Amount</th><th>Balance</th></tr></thead>\
<tbody>{rows}</tbody></table>",
            holder = escape(holder)
        ),
    )
}

/// Renders the confirmation after a note was saved.
pub fn note_saved(note: &str) -> String {
    document(
        "Demo Bank - note saved",
        &format!(
            "<h1>Note saved</h1><p id=\"saved-note\">{}</p><p><a href=\"/account\">Back to the account</a></p>",
            escape(note)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_replaces_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn account_lists_statement() {
        let page = account("<b>");
        assert!(page.contains("&lt;b&gt;"));
        assert_eq!(
            page.matches("<tr><td>").count(),
            statement::TRANSACTION_COUNT
        );
    }
}
