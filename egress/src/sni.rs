//! Extraction of the server name (SNI) from a TLS ClientHello.

/// TLS record content type of handshake messages.
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Extension number of `server_name` (RFC 6066).
const EXTENSION_SERVER_NAME: u16 = 0;
/// `host_name` entry type inside `server_name`.
const NAME_TYPE_HOST: u8 = 0;
/// Maximum ClientHello size accepted. Browsers send 0.5 to 2 KiB, more with post-quantum
/// key shares; the TLS limit for one handshake message is far higher but not needed.
pub(crate) const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Result of parsing the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientHello {
    /// More bytes are needed.
    Incomplete,
    /// A complete ClientHello, with its server name if it carries one.
    Parsed { server_name: Option<String> },
    /// The bytes are not a TLS ClientHello, or it exceeds [`MAX_CLIENT_HELLO`].
    Invalid,
}

/// Parses a ClientHello that may span several TLS records.
pub(crate) fn parse(buffer: &[u8]) -> ClientHello {
    let mut handshake = Vec::new();
    let mut rest = buffer;

    loop {
        let Some(header) = rest.get(..5) else {
            return ClientHello::Incomplete;
        };
        if header[0] != CONTENT_HANDSHAKE || header[1] != 3 {
            return ClientHello::Invalid;
        }
        let record_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if record_len == 0 {
            return ClientHello::Invalid;
        }
        let Some(fragment) = rest.get(5..5 + record_len) else {
            return ClientHello::Incomplete;
        };
        handshake.extend_from_slice(fragment);
        rest = &rest[5 + record_len..];

        if handshake[0] != HANDSHAKE_CLIENT_HELLO {
            return ClientHello::Invalid;
        }
        let Some(length_bytes) = handshake.get(1..4) else {
            continue;
        };
        let message_len = usize::from(length_bytes[0]) << 16
            | usize::from(length_bytes[1]) << 8
            | usize::from(length_bytes[2]);
        if message_len > MAX_CLIENT_HELLO {
            return ClientHello::Invalid;
        }
        if let Some(body) = handshake.get(4..4 + message_len) {
            return match server_name(body) {
                Some(server_name) => ClientHello::Parsed { server_name },
                None => ClientHello::Invalid,
            };
        }
    }
}

/// Reads the `server_name` extension of a ClientHello body. Returns `None` when the body
/// is malformed and `Some(None)` when it carries no host name.
fn server_name(body: &[u8]) -> Option<Option<String>> {
    let mut reader = Reader(body);
    reader.take(2 + 32)?; // legacy_version, random
    let session_id_len = reader.u8()?;
    reader.take(usize::from(session_id_len))?;
    let suites_len = reader.u16()?;
    reader.take(usize::from(suites_len))?;
    let compression_len = reader.u8()?;
    reader.take(usize::from(compression_len))?;
    if reader.0.is_empty() {
        return Some(None);
    }

    let extensions_len = reader.u16()?;
    let mut extensions = Reader(reader.take(usize::from(extensions_len))?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let len = extensions.u16()?;
        let data = extensions.take(usize::from(len))?;
        if kind != EXTENSION_SERVER_NAME {
            continue;
        }

        let mut list = Reader(data);
        let list_len = list.u16()?;
        let mut names = Reader(list.take(usize::from(list_len))?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name_len = names.u16()?;
            let name = names.take(usize::from(name_len))?;
            if name_type == NAME_TYPE_HOST {
                let name = std::str::from_utf8(name).ok()?;
                return Some(Some(name.to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.0.len() < len {
            return None;
        }
        let (head, tail) = self.0.split_at(len);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let bytes = self.take(2)?;
        Some(u16::from_be_bytes([bytes[0], bytes[1]]))
    }
}

/// Builds a minimal TLS 1.2-style ClientHello carrying `server_name`, split into records
/// of at most `record_size` bytes. Used by tests in this crate and its integration tests.
#[doc(hidden)]
pub fn client_hello_for_tests(server_name: Option<&str>, record_size: usize) -> Vec<u8> {
    let mut extensions = Vec::new();
    if let Some(name) = server_name {
        let name = name.as_bytes();
        let entry_len = 3 + name.len();
        extensions.extend_from_slice(&EXTENSION_SERVER_NAME.to_be_bytes());
        extensions.extend_from_slice(&((entry_len + 2) as u16).to_be_bytes());
        extensions.extend_from_slice(&(entry_len as u16).to_be_bytes());
        extensions.push(NAME_TYPE_HOST);
        extensions.extend_from_slice(&(name.len() as u16).to_be_bytes());
        extensions.extend_from_slice(name);
    }
    // An unrelated extension (supported_versions) after the server name.
    extensions.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);

    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7; 32]);
    body.push(0); // empty session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);

    let mut handshake = vec![HANDSHAKE_CLIENT_HELLO];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);

    let mut records = Vec::new();
    for chunk in handshake.chunks(record_size.max(1)) {
        records.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
        records.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        records.extend_from_slice(chunk);
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_is_extracted() {
        let hello = client_hello_for_tests(Some("Bank.Example"), 16 * 1024);
        assert_eq!(
            parse(&hello),
            ClientHello::Parsed {
                server_name: Some("bank.example".into())
            }
        );
    }

    #[test]
    fn hello_split_across_records_is_parsed() {
        let hello = client_hello_for_tests(Some("bank.example"), 7);
        assert_eq!(
            parse(&hello),
            ClientHello::Parsed {
                server_name: Some("bank.example".into())
            }
        );
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let hello = client_hello_for_tests(Some("bank.example"), 20);
        for end in 0..hello.len() {
            assert_eq!(
                parse(&hello[..end]),
                ClientHello::Incomplete,
                "prefix of {end} bytes"
            );
        }
    }

    #[test]
    fn hello_without_server_name_is_parsed() {
        let hello = client_hello_for_tests(None, 16 * 1024);
        assert_eq!(parse(&hello), ClientHello::Parsed { server_name: None });
    }

    #[test]
    fn plain_http_is_invalid() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: bank.example\r\n\r\n"),
            ClientHello::Invalid
        );
    }

    #[test]
    fn truncated_body_is_invalid() {
        let mut hello = client_hello_for_tests(Some("bank.example"), 16 * 1024);
        // Claim a longer extension block than the message holds.
        let extensions_len_at = 5 + 4 + 2 + 32 + 1 + 4 + 2;
        hello[extensions_len_at] = 0xff;
        assert_eq!(parse(&hello), ClientHello::Invalid);
    }
}
