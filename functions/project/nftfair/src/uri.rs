//! Token URIs: where a token's metadata is, by scheme.
//!
//! - `http://`, `https://`: fetched as is.
//! - `ipfs://CID/path` and `ipfs://ipfs/CID/path`: fetched through the gateway as
//!   `{gateway}CID/path`.
//! - `data:application/json;base64,...` and `data:application/json,...` (percent-encoded, or
//!   raw JSON as many contracts write it): decoded in place, no fetch.

/// Where a token's metadata comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Fetch this URL.
    Http(String),
    /// The document itself, from a `data:` URI.
    Inline(Vec<u8>),
}

/// Resolves a token URI; the error says what is wrong with it.
pub fn resolve(uri: &str, gateway: &str) -> Result<Source, String> {
    let uri = uri.trim();
    let lower = uri.get(..8).unwrap_or(uri).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(Source::Http(uri.to_owned()));
    }
    if lower.starts_with("ipfs://") {
        return ipfs(&uri[7..], gateway).map(Source::Http);
    }
    if lower.starts_with("data:") {
        return data(uri).map(Source::Inline);
    }
    let scheme = uri.split_once(':').map_or("", |(s, _)| s);
    Err(if scheme.is_empty() || scheme.contains('/') {
        "not a URI: expected http(s)://, ipfs:// or data:application/json".to_owned()
    } else {
        format!("unsupported URI scheme `{scheme}`: expected http(s)://, ipfs:// or data:application/json")
    })
}

fn ipfs(rest: &str, gateway: &str) -> Result<String, String> {
    // `ipfs://ipfs/CID` is a common mistake for `ipfs://CID`; gateways want the CID first.
    let rest = rest.strip_prefix("ipfs/").unwrap_or(rest);
    let cid = rest.split(['/', '?', '#']).next().unwrap_or("");
    if cid.is_empty() || !cid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("ipfs:// URI without a valid CID after the scheme".to_owned());
    }
    Ok(format!("{gateway}{rest}"))
}

fn data(uri: &str) -> Result<Vec<u8>, String> {
    let url = data_url::DataUrl::process(uri)
        .map_err(|_| "invalid data: URI: expected data:application/json[;base64],<document>".to_owned())?;
    let mime = url.mime_type();
    if !(mime.type_ == "application" && mime.subtype == "json") {
        return Err(format!("data: URI of type {}/{}: expected application/json", mime.type_, mime.subtype));
    }
    let (body, _fragment) = url.decode_to_vec().map_err(|_| "data: URI with invalid base64".to_owned())?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GW: &str = "https://gw.example/ipfs/";

    #[test]
    fn resolves_each_scheme() {
        assert_eq!(resolve("https://x.example/1", GW), Ok(Source::Http("https://x.example/1".into())));
        assert_eq!(resolve(" HTTP://x.example/1 ", GW), Ok(Source::Http("HTTP://x.example/1".into())));
        assert_eq!(resolve("ipfs://QmAbc/7", GW), Ok(Source::Http("https://gw.example/ipfs/QmAbc/7".into())));
        assert_eq!(
            resolve("ipfs://ipfs/QmAbc/7.json", GW),
            Ok(Source::Http("https://gw.example/ipfs/QmAbc/7.json".into()))
        );
        assert_eq!(resolve("ipfs://bafybeigdyr", GW), Ok(Source::Http("https://gw.example/ipfs/bafybeigdyr".into())));
        assert_eq!(
            resolve("data:application/json;base64,eyJuYW1lIjoiQSJ9", GW),
            Ok(Source::Inline(br#"{"name":"A"}"#.to_vec()))
        );
        assert_eq!(
            resolve("data:application/json,%7B%22name%22%3A%22%C3%A9%22%7D", GW),
            Ok(Source::Inline("{\"name\":\"é\"}".as_bytes().to_vec()))
        );
        assert_eq!(
            resolve(r#"data:application/json;utf8,{"name":"raw"}"#, GW),
            Ok(Source::Inline(br#"{"name":"raw"}"#.to_vec()))
        );
    }

    #[test]
    fn explains_what_it_cannot_resolve() {
        let err = |uri: &str| resolve(uri, GW).unwrap_err();
        assert!(err("ar://abc").contains("unsupported URI scheme `ar`"));
        assert!(err("just text").contains("not a URI"));
        assert!(err("ipfs://").contains("without a valid CID"));
        assert!(err("ipfs://../etc/passwd").contains("without a valid CID"));
        assert!(err("data:text/plain,hello").contains("text/plain: expected application/json"));
        assert!(err("data:application/json;base64,%%%").contains("invalid base64"));
    }
}
