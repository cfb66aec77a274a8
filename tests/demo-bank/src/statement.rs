//! The demo account's statement: the same generated transactions as an HTML table and
//! as a PDF document.

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};

/// Number of transactions on the statement; long enough to need scrolling in the page
/// and several PDF pages.
pub const TRANSACTION_COUNT: usize = 240;

const LINES_PER_PAGE: usize = 50;
const A4_WIDTH_PT: f32 = 595.0;
const A4_HEIGHT_PT: f32 = 842.0;

/// One statement line. Amounts are in cents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub date: String,
    pub description: String,
    pub amount_cents: i64,
    pub balance_cents: i64,
}

const PAYEES: [&str; 8] = [
    "Grocery market",
    "Rail ticket",
    "Salary",
    "Electricity",
    "Pharmacy",
    "Bookshop",
    "Rent",
    "Cafe",
];

/// Returns the statement's transactions, the same on every call.
pub fn transactions() -> Vec<Transaction> {
    let mut balance_cents: i64 = 1_250_000;
    (0..TRANSACTION_COUNT)
        .map(|index| {
            let payee = PAYEES[index % PAYEES.len()];
            let amount_cents = if payee == "Salary" {
                320_000
            } else {
                -((index as i64 * 7_919) % 25_000 + 150)
            };
            balance_cents += amount_cents;
            let day = index % 28 + 1;
            let month = index / 28 % 12 + 1;
            Transaction {
                date: format!("2026-{month:02}-{day:02}"),
                description: format!("{payee} #{:04}", index + 1),
                amount_cents,
                balance_cents,
            }
        })
        .collect()
}

/// Formats cents as `-1234.56`.
pub fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}{}.{:02}", cents / 100, cents % 100)
}

/// Renders the statement as a PDF with the standard Courier font, 50 lines per A4 page.
pub fn pdf(holder: &str) -> Vec<u8> {
    let lines = statement_lines(holder);
    let pages: Vec<&[String]> = lines.chunks(LINES_PER_PAGE).collect();

    let catalog_id = Ref::new(1);
    let tree_id = Ref::new(2);
    let font_id = Ref::new(3);
    let first_page = 4;
    let page_ids: Vec<Ref> = (0..pages.len())
        .map(|index| Ref::new(first_page + 2 * index as i32))
        .collect();
    let font_name = Name(b"F1");

    let mut pdf = Pdf::new();
    pdf.catalog(catalog_id).pages(tree_id);
    pdf.pages(tree_id)
        .kids(page_ids.iter().copied())
        .count(pages.len() as i32);
    pdf.type1_font(font_id).base_font(Name(b"Courier"));

    for (page_lines, page_id) in pages.iter().zip(&page_ids) {
        let content_id = Ref::new(page_id.get() + 1);
        let mut page = pdf.page(*page_id);
        page.media_box(Rect::new(0.0, 0.0, A4_WIDTH_PT, A4_HEIGHT_PT));
        page.parent(tree_id);
        page.contents(content_id);
        page.resources().fonts().pair(font_name, font_id);
        page.finish();

        let mut content = Content::new();
        content.begin_text();
        content.set_font(font_name, 9.0);
        content.set_leading(14.0);
        content.next_line(40.0, A4_HEIGHT_PT - 50.0);
        for line in page_lines.iter() {
            content.show(Str(line.as_bytes()));
            content.next_line_using_leading();
        }
        content.end_text();
        pdf.stream(content_id, &content.finish());
    }
    pdf.finish()
}

/// Formats the PDF's text lines: a header, then one line per transaction. ASCII only, because
/// the standard fonts are used without an embedded encoding.
fn statement_lines(holder: &str) -> Vec<String> {
    let holder: String = holder
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    let mut lines = vec![
        "Demo Bank - account statement".to_owned(),
        format!("Account holder: {holder}"),
        format!(
            "{:<12}{:<28}{:>14}{:>14}",
            "Date", "Description", "Amount", "Balance"
        ),
    ];
    for transaction in transactions() {
        lines.push(format!(
            "{:<12}{:<28}{:>14}{:>14}",
            transaction.date,
            transaction.description,
            format_cents(transaction.amount_cents),
            format_cents(transaction.balance_cents)
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdf_has_one_page_per_fifty_lines() {
        let document = pdf("Ada Lovelace");
        let text = String::from_utf8_lossy(&document);
        assert!(document.starts_with(b"%PDF-"), "missing PDF header");
        assert!(text.trim_end().ends_with("%%EOF"), "missing PDF trailer");
        let expected_pages = (TRANSACTION_COUNT + 3).div_ceil(LINES_PER_PAGE);
        assert!(
            text.contains(&format!("/Count {expected_pages}")),
            "page count {expected_pages} missing"
        );
    }

    #[test]
    fn pdf_lists_every_transaction() {
        let text = String::from_utf8_lossy(&pdf("x")).into_owned();
        for transaction in transactions() {
            assert!(
                text.contains(&transaction.description),
                "{} missing",
                transaction.description
            );
        }
    }

    #[test]
    fn cents_format_with_sign() {
        assert_eq!(format_cents(-1), "-0.01");
        assert_eq!(format_cents(123_456), "1234.56");
    }
}
