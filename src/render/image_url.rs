//! The `image_url` rule of the `WithImagekit` concern (payloads.md §1.5).
//!
//! This module owns the pure function that turns an attachment's blob
//! (its key and metadata text) plus the configured ImageKit endpoint into the
//! URL Rails would emit. Finding the attachment is the caller's job: with no
//! attachment, `image_url` is `null` and this function is not consulted.

use serde_json::Value;

use super::json::{reencode_with_max_nesting, RUBY_MAX_NESTING};

/// The URL Rails' `image_url` gives for an attached image, or `None` for `null`.
///
/// * `endpoint`: the relay's `IMAGEKIT_URL_ENDPOINT`, if configured.
/// * `key`: `active_storage_blobs.key` of the attachment's blob; `None` when
///   the blob row is missing (Rails then fails inside `image_url` and returns `nil`).
/// * `metadata`: `active_storage_blobs.metadata` text.
///
/// Metadata that is NULL, blank or valid JSON but not an object counts as
/// `{}`; metadata that is not valid JSON (or nests deeper than Ruby's
/// parser allows, 100 levels) gives `None`. The result is
/// `imagekit_url` if non-blank, else `url` if non-blank, else
/// `endpoint.chomp("/") + "/" + path.delete_prefix("/")` where `path` is a
/// non-blank `imagekit_file_path`, else the blob key. With no endpoint that
/// last step gives `None` (Rails' signed-URL fallback is out of scope).
///
/// Non-string metadata values: `null`, `false`, `[]` and `{}` are blank and
/// skipped like `""`. A non-blank non-string `imagekit_file_path` makes Rails
/// fail (`nil`), reproduced as `None`. A non-blank non-string `imagekit_url`
/// or `url` would be emitted by Rails as that JSON value; the relay emits
/// `None` (`null`) instead.
pub fn image_url(
    endpoint: Option<&str>,
    key: Option<&str>,
    metadata: Option<&str>,
) -> Option<String> {
    let key = key?;
    let parsed = match metadata {
        Some(text) if !is_blank(text) => {
            // Ruby's parser rejects more than 100 levels of nesting: Rails then returns nil.
            let mut scratch = String::new();
            if reencode_with_max_nesting(&mut scratch, text, RUBY_MAX_NESTING).is_err() {
                return None;
            }
            match serde_json::from_str::<Value>(text) {
                Ok(v) => Some(v),
                Err(_) => return None,
            }
        }
        _ => None,
    };
    let object = parsed.as_ref().and_then(Value::as_object);
    let field = |name: &str| object.and_then(|o| o.get(name)).filter(|v| is_present(v));

    for name in ["imagekit_url", "url"] {
        if let Some(v) = field(name) {
            return v.as_str().map(str::to_owned);
        }
    }
    let path = match field("imagekit_file_path") {
        Some(v) => v.as_str()?,
        None => key,
    };
    let endpoint = endpoint?;
    let base = endpoint.strip_suffix('/').unwrap_or(endpoint);
    let path = path.strip_prefix('/').unwrap_or(path);
    let mut url = String::with_capacity(base.len() + 1 + path.len());
    url.push_str(base);
    url.push('/');
    url.push_str(path);
    Some(url)
}

/// Ruby's `String#blank?`: empty or only whitespace.
fn is_blank(s: &str) -> bool {
    s.chars().all(char::is_whitespace)
}

/// Ruby's `present?` for a parsed JSON value.
fn is_present(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !is_blank(s),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Bool(true) | Value::Number(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::image_url;

    const EP: Option<&str> = Some("https://ik.imagekit.io/abc/chi-war-production/");

    #[test]
    fn imagekit_url_first_then_url() {
        let m = r#"{"url":"https://u/x.png","imagekit_url":"https://ik/x.png"}"#;
        assert_eq!(
            image_url(EP, Some("k"), Some(m)).as_deref(),
            Some("https://ik/x.png")
        );
        let m = r#"{"imagekit_url":"  ","url":"https://u/x.png"}"#;
        assert_eq!(
            image_url(EP, Some("k"), Some(m)).as_deref(),
            Some("https://u/x.png")
        );
        // No endpoint needed when the metadata carries the URL.
        assert_eq!(
            image_url(None, Some("k"), Some(m)).as_deref(),
            Some("https://u/x.png")
        );
    }

    #[test]
    fn file_path_then_key() {
        let m = r#"{"imagekit_url":"","url":null,"imagekit_file_path":"/chars/a b.png"}"#;
        assert_eq!(
            image_url(EP, Some("k"), Some(m)).as_deref(),
            Some("https://ik.imagekit.io/abc/chi-war-production/chars/a b.png")
        );
        let m = r#"{"imagekit_file_path":"\t"}"#;
        assert_eq!(
            image_url(EP, Some("blobkey"), Some(m)).as_deref(),
            Some("https://ik.imagekit.io/abc/chi-war-production/blobkey")
        );
    }

    #[test]
    fn chomp_and_delete_prefix_strip_one_character() {
        assert_eq!(
            image_url(Some("https://e//"), Some("//k"), None).as_deref(),
            Some("https://e///k")
        );
        assert_eq!(
            image_url(Some("https://e"), Some("k"), None).as_deref(),
            Some("https://e/k")
        );
    }

    #[test]
    fn null_blank_and_non_object_metadata_count_as_empty() {
        for m in [
            None,
            Some(""),
            Some("  \n"),
            Some("[1]"),
            Some("\"s\""),
            Some("null"),
            Some("3"),
        ] {
            assert_eq!(
                image_url(Some("https://e/"), Some("k"), m).as_deref(),
                Some("https://e/k"),
                "{m:?}"
            );
        }
    }

    #[test]
    fn invalid_metadata_is_null() {
        assert_eq!(image_url(EP, Some("k"), Some("{not json")), None);
        assert_eq!(image_url(EP, Some("k"), Some("{\"a\":1}x")), None);
    }

    #[test]
    fn no_endpoint_and_no_url_is_null() {
        assert_eq!(image_url(None, Some("k"), Some("{}")), None);
        assert_eq!(
            image_url(None, Some("k"), Some(r#"{"imagekit_file_path":"p"}"#)),
            None
        );
    }

    #[test]
    fn metadata_nested_deeper_than_ruby_allows_is_null() {
        let ok = format!("{{\"x\":{}{}}}", "[".repeat(99), "]".repeat(99));
        assert_eq!(
            image_url(Some("https://e"), Some("k"), Some(&ok)).as_deref(),
            Some("https://e/k")
        );
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(image_url(Some("https://e"), Some("k"), Some(&deep)), None);
    }

    #[test]
    fn missing_blob_is_null() {
        assert_eq!(image_url(EP, None, None), None);
    }

    #[test]
    fn non_string_values() {
        // Blank non-strings are skipped.
        let m = r#"{"imagekit_url":false,"url":[],"imagekit_file_path":{}}"#;
        assert_eq!(
            image_url(Some("https://e"), Some("k"), Some(m)).as_deref(),
            Some("https://e/k")
        );
        // A present non-string path fails in Rails (nil).
        assert_eq!(
            image_url(
                Some("https://e"),
                Some("k"),
                Some(r#"{"imagekit_file_path":5}"#)
            ),
            None
        );
        assert_eq!(
            image_url(Some("https://e"), Some("k"), Some(r#"{"url":true}"#)),
            None
        );
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let m = r#"{"url":"https://a","url":"https://b"}"#;
        assert_eq!(
            image_url(None, Some("k"), Some(m)).as_deref(),
            Some("https://b")
        );
    }
}
