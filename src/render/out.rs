//! Small writers for payload fields: objects with fixed keys and typed values
//! (uuid, optional scalars, timestamps, jsonb text), all Rails-encoded.

use tokio_postgres::Row;
use uuid::Uuid;

use super::json::{push_f64, push_str, reencode_with_max_nesting, RUBY_MAX_NESTING};
use super::RenderError;

/// SQL expression (a string literal) rendering the timestamp column `$col`
/// as Rails `xmlschema(3)`: the stored UTC value, always three fractional
/// digits, truncated (PG's `MS` truncates), suffix `Z`. `infinity` gives NULL.
macro_rules! xmlschema {
    ($col:literal) => {
        concat!("to_char(", $col, r#", 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"#)
    };
}
pub(crate) use xmlschema;

/// SQL fragment (a string literal): `LEFT JOIN LATERAL` the first `image`
/// attachment of a record (lowest attachment id) as `<p>a`, and its blob as `<p>b`.
/// Select its columns with [`image_columns`] and the same prefix.
macro_rules! image_join {
    ($record_type:literal, $record_id:literal, $p:literal) => {
        concat!(
            " LEFT JOIN LATERAL (SELECT id, blob_id FROM active_storage_attachments",
            " WHERE record_type = '",
            $record_type,
            "' AND record_id = ",
            $record_id,
            " AND name = 'image' ORDER BY id LIMIT 1) ",
            $p,
            "a ON true",
            " LEFT JOIN active_storage_blobs ",
            $p,
            "b ON ",
            $p,
            "b.id = ",
            $p,
            "a.blob_id "
        )
    };
}
pub(crate) use image_join;

/// SQL select list for [`image_join`] with the same prefix `p`: `<p>attached`
/// (bool), `<p>key` and `<p>metadata` (text, NULL when the blob row is missing).
macro_rules! image_columns {
    ($p:literal) => {
        concat!(
            $p,
            "a.id IS NOT NULL AS ",
            $p,
            "attached, ",
            $p,
            "b.key AS ",
            $p,
            "key, ",
            $p,
            "b.metadata AS ",
            $p,
            "metadata"
        )
    };
}
pub(crate) use image_columns;

/// Writes an object with fixed keys: `{` on creation, `,"key":` per field, `}` at the end.
pub(crate) struct Obj<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Obj<'a> {
    /// Opens the object.
    pub(crate) fn new(out: &'a mut String) -> Self {
        out.push('{');
        Obj { out, first: true }
    }

    /// Writes the next key (a plain identifier that needs no escaping) and
    /// returns the buffer for its value.
    pub(crate) fn key(&mut self, key: &'static str) -> &mut String {
        debug_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
        self.out
    }

    /// Closes the object.
    pub(crate) fn end(self) {
        self.out.push('}');
    }
}

/// A uuid as a lower-case hyphenated JSON string.
pub(crate) fn push_uuid(out: &mut String, id: Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push('"');
    out.push_str(id.hyphenated().encode_lower(&mut buf));
    out.push('"');
}

/// An optional uuid.
pub(crate) fn push_opt_uuid(out: &mut String, id: Option<Uuid>) {
    match id {
        Some(id) => push_uuid(out, id),
        None => out.push_str("null"),
    }
}

/// An optional string (also used for timestamps rendered by [`xmlschema`]).
pub(crate) fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.push_str("null"),
    }
}

/// A boolean.
pub(crate) fn push_bool(out: &mut String, b: bool) {
    out.push_str(if b { "true" } else { "false" });
}

/// An optional boolean.
pub(crate) fn push_opt_bool(out: &mut String, b: Option<bool>) {
    match b {
        Some(b) => push_bool(out, b),
        None => out.push_str("null"),
    }
}

/// An optional integer.
pub(crate) fn push_opt_i32(out: &mut String, v: Option<i32>) {
    use std::fmt::Write as _;
    match v {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("null"),
    }
}

/// An optional double, Ruby notation.
pub(crate) fn push_opt_f64(out: &mut String, v: Option<f64>) {
    match v {
        Some(v) => push_f64(out, v),
        None => out.push_str("null"),
    }
}

/// A json/jsonb column fetched as text (`col::text`), re-encoded; SQL NULL is `null`.
///
/// Like Rails (whose json type decodes with Ruby's default `max_nesting` of
/// 100 and turns a parse error into `nil`), a value nested more than 100
/// levels deep is `null`.
pub(crate) fn push_jsonb(
    out: &mut String,
    text: Option<&str>,
    column: &'static str,
) -> Result<(), RenderError> {
    let Some(text) = text else {
        out.push_str("null");
        return Ok(());
    };
    match reencode_with_max_nesting(out, text, RUBY_MAX_NESTING) {
        Ok(()) => Ok(()),
        Err(e) if e.is_too_deep() => {
            out.push_str("null");
            Ok(())
        }
        Err(source) => Err(RenderError::Json { column, source }),
    }
}

/// A JSON array of uuids.
pub(crate) fn push_uuid_array(out: &mut String, ids: &[Uuid]) {
    out.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_uuid(out, *id);
    }
    out.push(']');
}

/// `image_url` for a row that selected [`image_columns`]; `cols` are their
/// names (`<p>attached`, `<p>key`, `<p>metadata`).
pub(crate) fn push_image_url(
    out: &mut String,
    row: &Row,
    cols: [&str; 3],
    endpoint: Option<&str>,
) -> Result<(), RenderError> {
    let attached: bool = row.try_get(cols[0])?;
    let url = if attached {
        let key: Option<&str> = row.try_get(cols[1])?;
        let metadata: Option<&str> = row.try_get(cols[2])?;
        super::image_url::image_url(endpoint, key, metadata)
    } else {
        None
    };
    push_opt_str(out, url.as_deref());
    Ok(())
}
