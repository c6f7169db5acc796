//! Rails (ActiveSupport::JSON) encoding of JSON values.
//!
//! This module owns the byte-exact JSON text the relay emits: string escaping
//! ([`push_str`]), Ruby's double notation ([`push_f64`]) and re-encoding of
//! JSON produced elsewhere (Postgres `jsonb`/`json` output, client-supplied
//! values) into the same form Rails would produce after parsing it
//! ([`reencode`]). The rules are in `payloads.md` §0.

use std::fmt;

/// Error for text that is not valid JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset in the input where the problem was detected.
    pos: usize,
    /// What was wrong.
    msg: &'static str,
    /// The text is valid JSON but nests deeper than the limit asked for.
    too_deep: bool,
}

impl JsonError {
    fn new(pos: usize, msg: &'static str) -> Self {
        JsonError {
            pos,
            msg,
            too_deep: false,
        }
    }

    /// Whether the error is only that the nesting limit of
    /// [`reencode_with_max_nesting`] was exceeded.
    pub(crate) fn is_too_deep(&self) -> bool {
        self.too_deep
    }

    /// Byte offset in the input where the problem was detected.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.pos, self.msg)
    }
}

impl std::error::Error for JsonError {}

/// Byte classes used by the string scanners.
///
/// 0: copy verbatim; 1: control character (< 0x20); 2: `"`; 3: `\`;
/// 4: one of `<` `>` `&`; 5: 0xE2, a lead byte that may start U+2028/U+2029.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = 1;
        i += 1;
    }
    t[b'"' as usize] = 2;
    t[b'\\' as usize] = 3;
    t[b'<' as usize] = 4;
    t[b'>' as usize] = 4;
    t[b'&' as usize] = 4;
    t[0xE2] = 5;
    t
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `\u00xx` (lower-case hex) for a byte below 0x80.
#[inline]
fn push_u00(out: &mut String, b: u8) {
    out.push_str("\\u00");
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 0xF) as usize] as char);
}

/// Appends the escape for an ASCII byte that [`CLASS`] marks as special (classes 1–4).
#[inline]
fn push_ascii_escape(out: &mut String, b: u8) {
    match b {
        b'"' => out.push_str("\\\""),
        b'\\' => out.push_str("\\\\"),
        0x08 => out.push_str("\\b"),
        0x0C => out.push_str("\\f"),
        b'\n' => out.push_str("\\n"),
        b'\r' => out.push_str("\\r"),
        b'\t' => out.push_str("\\t"),
        _ => push_u00(out, b),
    }
}

/// Whether the bytes at `i` (where `bytes[i] == 0xE2`) encode U+2028 or U+2029.
#[inline]
fn is_line_sep(bytes: &[u8], i: usize) -> bool {
    bytes.get(i + 1) == Some(&0x80) && matches!(bytes.get(i + 2), Some(0xA8) | Some(0xA9))
}

/// Appends one decoded character, escaped the Rails way.
#[inline]
fn push_char_escaped(out: &mut String, c: char) {
    let cp = c as u32;
    if cp < 0x80 {
        let b = cp as u8;
        if CLASS[b as usize] != 0 {
            push_ascii_escape(out, b);
        } else {
            out.push(c);
        }
    } else if cp == 0x2028 {
        out.push_str("\\u2028");
    } else if cp == 0x2029 {
        out.push_str("\\u2029");
    } else {
        out.push(c);
    }
}

/// Appends `s` as a JSON string literal (with quotes) using ActiveSupport's escaping.
///
/// `"` and `\` are escaped; `\b \f \n \r \t` use short escapes; other C0
/// controls become `\u00xx` (lower-case hex); `<` `>` `&` become `\u003c`
/// `\u003e` `\u0026`; U+2028/U+2029 become `\u2028`/`\u2029`. `/`, DEL and
/// all other non-ASCII characters are emitted raw.
pub fn push_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match CLASS[b as usize] {
            0 => {
                i += 1;
            }
            5 => {
                if is_line_sep(bytes, i) {
                    out.push_str(&s[start..i]);
                    out.push_str(if bytes[i + 2] == 0xA8 {
                        "\\u2028"
                    } else {
                        "\\u2029"
                    });
                    i += 3;
                    start = i;
                } else {
                    i += 1;
                }
            }
            _ => {
                out.push_str(&s[start..i]);
                push_ascii_escape(out, b);
                i += 1;
                start = i;
            }
        }
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// A fixed-size buffer for formatting one `f64` without allocating.
struct NumBuf {
    data: [u8; 40],
    len: usize,
}

impl fmt::Write for NumBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.data.len() {
            return Err(fmt::Error);
        }
        self.data[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Appends a double the way Ruby's JSON prints it (notation rules in payloads.md §0); NaN/±inf → null.
///
/// Digits are the shortest round-trip digits. With `n` digits and `K` the
/// decimal exponent of the last digit: if `K >= 0` and `|K+n-1| < 15`, the
/// digits, `K` zeros and `.0` (`100.0`); else if `K < 0` and (`K > -7` or
/// `|K+n-1| < 10`), a plain decimal (`0.00001`); else scientific
/// `d[.ddd]e±X` (`1e+15`, `1.5e-10`). Zero prints as `0.0` / `-0.0`.
pub fn push_f64(out: &mut String, v: f64) {
    use fmt::Write as _;
    if !v.is_finite() {
        out.push_str("null");
        return;
    }
    if v == 0.0 {
        out.push_str(if v.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    let mut buf = NumBuf {
        data: [0; 40],
        len: 0,
    };
    // `{:e}` prints the shortest round-trip digits as `-d.ddde-X`.
    if write!(buf, "{:e}", v.abs()).is_err() {
        // Cannot happen (the longest form is 23 bytes); fall back to Display.
        let _ = write!(out, "{v:?}");
        return;
    }
    let text = &buf.data[..buf.len];
    let e_pos = text.iter().position(|&b| b == b'e').unwrap_or(text.len());
    let mut digits = [0u8; 24];
    let mut n = 0usize;
    for &b in &text[..e_pos] {
        if b.is_ascii_digit() && n < digits.len() {
            digits[n] = b;
            n += 1;
        }
    }
    let mut exp: i32 = 0;
    let mut neg_exp = false;
    for &b in text.get(e_pos + 1..).unwrap_or(&[]) {
        match b {
            b'-' => neg_exp = true,
            b'0'..=b'9' => exp = exp * 10 + i32::from(b - b'0'),
            _ => {}
        }
    }
    if neg_exp {
        exp = -exp;
    }
    // `exp` is the exponent of the first digit (K + n - 1).
    let digits = &digits[..n];
    let n_i = n as i32;
    let k = exp - n_i + 1;
    if v.is_sign_negative() {
        out.push('-');
    }
    let push_digits = |out: &mut String, d: &[u8]| {
        for &b in d {
            out.push(b as char);
        }
    };
    if k >= 0 && exp.abs() < 15 {
        push_digits(out, digits);
        for _ in 0..k {
            out.push('0');
        }
        out.push_str(".0");
    } else if k < 0 && (k > -7 || exp.abs() < 10) {
        if exp >= 0 {
            // There are more digits than integer positions, since k < 0.
            let int_len = (exp + 1) as usize;
            push_digits(out, &digits[..int_len]);
            out.push('.');
            push_digits(out, &digits[int_len..]);
        } else {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            push_digits(out, digits);
        }
    } else {
        push_digits(out, &digits[..1]);
        if n > 1 {
            out.push('.');
            push_digits(out, &digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let _ = write!(out, "{}", exp.unsigned_abs());
    }
}

/// Re-encodes a JSON text (e.g. Postgres jsonb/json output, or a client-supplied value) into Rails form:
/// same structure and key order, strings re-escaped the Rails way, integers verbatim (any size),
/// decimals → nearest double printed by push_f64 (overflow → null, underflow → 0.0), insignificant whitespace removed.
///
/// The parser is strict RFC 8259 (no trailing commas, comments, raw control
/// characters in strings or lone surrogate escapes), iterative (nesting depth
/// is bounded only by memory) and single-pass. `-0` is emitted as `0`, as Ruby
/// parses it to the integer zero. On error, `out` is restored to its
/// original length.
pub fn reencode(out: &mut String, json_text: &str) -> Result<(), JsonError> {
    reencode_with_max_nesting(out, json_text, usize::MAX)
}

/// Ruby's `JSON.parse` default `max_nesting`: a 101st nested array/object is
/// a parse error. Rails' json/jsonb attribute type turns that error into `nil`.
pub(crate) const RUBY_MAX_NESTING: usize = 100;

/// [`reencode`] that also fails (with [`JsonError::is_too_deep`]) when
/// arrays/objects nest more than `max_nesting` levels, as Ruby's parser does.
/// The whole text is still validated first: invalid JSON is a syntax error
/// even when it is also too deep.
pub(crate) fn reencode_with_max_nesting(
    out: &mut String,
    json_text: &str,
    max_nesting: usize,
) -> Result<(), JsonError> {
    let original_len = out.len();
    out.reserve(json_text.len());
    let result = Reencoder {
        src: json_text,
        bytes: json_text.as_bytes(),
        pos: 0,
        out,
        max_nesting,
        too_deep_at: None,
    }
    .run();
    if result.is_err() {
        out.truncate(original_len);
    }
    result
}

/// State of one [`reencode`] call.
struct Reencoder<'a, 'o> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    out: &'o mut String,
    max_nesting: usize,
    /// Where the nesting limit was first exceeded (parsing goes on to
    /// validate the rest).
    too_deep_at: Option<usize>,
}

impl Reencoder<'_, '_> {
    #[inline]
    fn skip_ws(&mut self) {
        while let Some(&b) = self.bytes.get(self.pos) {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn err<T>(&self, msg: &'static str) -> Result<T, JsonError> {
        Err(JsonError::new(self.pos, msg))
    }

    /// Records an opening bracket at nesting level `depth` (1 = top level).
    #[inline]
    fn open(&mut self, depth: usize) {
        if depth > self.max_nesting && self.too_deep_at.is_none() {
            self.too_deep_at = Some(self.pos);
        }
    }

    /// Parses the whole text, then reports a nesting error if one was seen.
    fn run(mut self) -> Result<(), JsonError> {
        self.parse()?;
        match self.too_deep_at {
            Some(pos) => Err(JsonError {
                pos,
                msg: "nesting too deep",
                too_deep: true,
            }),
            None => Ok(()),
        }
    }

    /// Parses the whole text. Containers are tracked on an explicit stack
    /// (`true` = object), so depth never touches the call stack.
    fn parse(&mut self) -> Result<(), JsonError> {
        let mut stack: Vec<bool> = Vec::new();
        'value: loop {
            // Expecting a value.
            self.skip_ws();
            match self.peek() {
                Some(b'{') => {
                    self.open(stack.len() + 1);
                    self.pos += 1;
                    self.out.push('{');
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                        self.out.push('}');
                    } else {
                        stack.push(true);
                        self.key()?;
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    self.open(stack.len() + 1);
                    self.pos += 1;
                    self.out.push('[');
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        self.out.push(']');
                    } else {
                        stack.push(false);
                        continue 'value;
                    }
                }
                Some(b'"') => self.string()?,
                Some(b't') => self.literal("true")?,
                Some(b'f') => self.literal("false")?,
                Some(b'n') => self.literal("null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(_) => return self.err("expected a value"),
                None => return self.err("unexpected end of input, expected a value"),
            }
            // After a value: close containers or move to the next element.
            loop {
                self.skip_ws();
                let Some(&in_object) = stack.last() else {
                    if self.pos != self.bytes.len() {
                        return self.err("trailing characters after the JSON value");
                    }
                    return Ok(());
                };
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.out.push(',');
                        if in_object {
                            self.skip_ws();
                            self.key()?;
                        }
                        continue 'value;
                    }
                    Some(b'}') if in_object => {
                        self.pos += 1;
                        self.out.push('}');
                        stack.pop();
                    }
                    Some(b']') if !in_object => {
                        self.pos += 1;
                        self.out.push(']');
                        stack.pop();
                    }
                    Some(_) if in_object => return self.err("expected ',' or '}'"),
                    Some(_) => return self.err("expected ',' or ']'"),
                    None => return self.err("unexpected end of input inside a container"),
                }
            }
        }
    }

    /// Parses `"key" :` (whitespace already skipped before the key).
    fn key(&mut self) -> Result<(), JsonError> {
        if self.peek() != Some(b'"') {
            return self.err("expected a string key");
        }
        self.string()?;
        self.skip_ws();
        if self.peek() != Some(b':') {
            return self.err("expected ':'");
        }
        self.pos += 1;
        self.out.push(':');
        Ok(())
    }

    fn literal(&mut self, word: &'static str) -> Result<(), JsonError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            self.out.push_str(word);
            Ok(())
        } else {
            self.err("invalid literal")
        }
    }

    /// Parses a string literal at `self.pos` (an opening quote) and re-escapes it.
    fn string(&mut self) -> Result<(), JsonError> {
        self.pos += 1;
        self.out.push('"');
        let bytes = self.bytes;
        let mut start = self.pos;
        let mut i = self.pos;
        loop {
            let Some(&b) = bytes.get(i) else {
                self.pos = i;
                return self.err("unterminated string");
            };
            match CLASS[b as usize] {
                0 => i += 1,
                1 => {
                    self.pos = i;
                    return self.err("raw control character in string");
                }
                2 => {
                    self.out.push_str(&self.src[start..i]);
                    self.out.push('"');
                    self.pos = i + 1;
                    return Ok(());
                }
                3 => {
                    self.out.push_str(&self.src[start..i]);
                    i = self.escape(i)?;
                    start = i;
                }
                4 => {
                    self.out.push_str(&self.src[start..i]);
                    push_u00(self.out, b);
                    i += 1;
                    start = i;
                }
                _ => {
                    if is_line_sep(bytes, i) {
                        self.out.push_str(&self.src[start..i]);
                        self.out.push_str(if bytes[i + 2] == 0xA8 {
                            "\\u2028"
                        } else {
                            "\\u2029"
                        });
                        i += 3;
                        start = i;
                    } else {
                        i += 1;
                    }
                }
            }
        }
    }

    /// Decodes the escape sequence at `i` (a backslash), appends its Rails
    /// form, and returns the index after it.
    fn escape(&mut self, i: usize) -> Result<usize, JsonError> {
        let bytes = self.bytes;
        let Some(&c) = bytes.get(i + 1) else {
            self.pos = i;
            return self.err("unterminated escape");
        };
        let short = match c {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'/' => Some("/"),
            b'b' => Some("\\b"),
            b'f' => Some("\\f"),
            b'n' => Some("\\n"),
            b'r' => Some("\\r"),
            b't' => Some("\\t"),
            _ => None,
        };
        if let Some(s) = short {
            self.out.push_str(s);
            return Ok(i + 2);
        }
        if c != b'u' {
            self.pos = i;
            return self.err("invalid escape");
        }
        let hi = self.hex4(i + 2)?;
        let (cp, next) = if (0xD800..0xDC00).contains(&hi) {
            if bytes.get(i + 6) != Some(&b'\\') || bytes.get(i + 7) != Some(&b'u') {
                self.pos = i;
                return self.err("high surrogate not followed by a low surrogate");
            }
            let lo = self.hex4(i + 8)?;
            if !(0xDC00..0xE000).contains(&lo) {
                self.pos = i + 6;
                return self.err("high surrogate not followed by a low surrogate");
            }
            (0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00), i + 12)
        } else {
            (hi, i + 6)
        };
        match char::from_u32(cp) {
            Some(ch) => {
                push_char_escaped(self.out, ch);
                Ok(next)
            }
            None => {
                self.pos = i;
                self.err("lone low surrogate")
            }
        }
    }

    /// Reads four hex digits at `i`.
    fn hex4(&mut self, i: usize) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for k in 0..4 {
            let d = match self.bytes.get(i + k) {
                Some(&b @ b'0'..=b'9') => b - b'0',
                Some(&b @ b'a'..=b'f') => b - b'a' + 10,
                Some(&b @ b'A'..=b'F') => b - b'A' + 10,
                _ => {
                    self.pos = i + k;
                    return self.err("invalid \\u escape");
                }
            };
            v = (v << 4) | u32::from(d);
        }
        Ok(v)
    }

    /// Parses a number: integers are copied verbatim, anything with a
    /// fraction or exponent becomes the nearest double.
    fn number(&mut self) -> Result<(), JsonError> {
        let bytes = self.bytes;
        let start = self.pos;
        let mut i = start;
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
        match bytes.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while matches!(bytes.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
            }
            _ => {
                self.pos = i;
                return self.err("invalid number");
            }
        }
        let int_end = i;
        let mut is_float = false;
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            if !matches!(bytes.get(i), Some(b'0'..=b'9')) {
                self.pos = i;
                return self.err("expected a digit after '.'");
            }
            while matches!(bytes.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
            is_float = true;
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !matches!(bytes.get(i), Some(b'0'..=b'9')) {
                self.pos = i;
                return self.err("expected a digit in the exponent");
            }
            while matches!(bytes.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
            is_float = true;
        }
        self.pos = i;
        let text = &self.src[start..i];
        if !is_float {
            // Ruby parses "-0" to the Integer 0.
            if text == "-0" {
                self.out.push('0');
            } else {
                self.out.push_str(text);
            }
            debug_assert_eq!(int_end, i);
            return Ok(());
        }
        match text.parse::<f64>() {
            Ok(v) => {
                push_f64(self.out, v);
                Ok(())
            }
            Err(_) => {
                self.pos = start;
                self.err("invalid number")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(input: &str) -> String {
        let mut out = String::new();
        push_str(&mut out, input);
        out
    }

    fn f(v: f64) -> String {
        let mut out = String::new();
        push_f64(&mut out, v);
        out
    }

    fn re(input: &str) -> String {
        let mut out = String::new();
        match reencode(&mut out, input) {
            Ok(()) => out,
            Err(e) => panic!("reencode({input:?}) failed: {e}"),
        }
    }

    fn re_err(input: &str) -> JsonError {
        let mut out = String::from("prefix");
        match reencode(&mut out, input) {
            Ok(()) => panic!("reencode({input:?}) accepted: {out}"),
            Err(e) => {
                assert_eq!(out, "prefix", "output not restored on error");
                e
            }
        }
    }

    #[test]
    fn str_plain_and_quotes() {
        assert_eq!(s(""), r#""""#);
        assert_eq!(s("abc"), r#""abc""#);
        assert_eq!(s(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn str_short_escapes() {
        assert_eq!(s("\u{8}\u{c}\n\r\t"), r#""\b\f\n\r\t""#);
    }

    #[test]
    fn str_other_controls_lowercase_hex() {
        assert_eq!(
            s("\u{0}\u{1}\u{b}\u{1f}\u{1b}"),
            r#""\u0000\u0001\u000b\u001f\u001b""#
        );
    }

    #[test]
    fn str_html_and_line_separators() {
        assert_eq!(
            s("<p>a & b</p>"),
            r#""\u003cp\u003ea \u0026 b\u003c/p\u003e""#
        );
        assert_eq!(s("x\u{2028}y\u{2029}z"), r#""x\u2028y\u2029z""#);
    }

    #[test]
    fn str_raw_characters() {
        // `/`, DEL, other non-ASCII (incl. other 0xE2-led characters) stay raw.
        assert_eq!(s("a/b\u{7f}"), "\"a/b\u{7f}\"");
        assert_eq!(s("é€…\u{2027}\u{202a}😀"), "\"é€…\u{2027}\u{202a}😀\"");
        assert_eq!(s("\u{2028}"), r#""\u2028""#);
        assert_eq!(s("€\u{2029}"), "\"€\\u2029\"");
    }

    #[test]
    fn f64_examples_from_spec() {
        assert_eq!(f(100.0), "100.0");
        assert_eq!(f(0.00001), "0.00001");
        assert_eq!(f(0.00000025), "0.00000025");
        assert_eq!(f(1e15), "1e+15");
        assert_eq!(f(1e20), "1e+20");
        assert_eq!(f(1.5e-10), "1.5e-10");
        assert_eq!(f(0.0), "0.0");
        assert_eq!(f(-0.0), "-0.0");
        assert_eq!(f(1.5), "1.5");
        assert_eq!(f(13.0), "13.0");
    }

    #[test]
    fn f64_notation_boundaries() {
        assert_eq!(f(1.0), "1.0");
        assert_eq!(f(-2.5), "-2.5");
        assert_eq!(f(123456789012345.0), "123456789012345.0");
        assert_eq!(f(1e14), "100000000000000.0");
        assert_eq!(f(1.5e15), "1.5e+15");
        assert_eq!(f(1234567890123456.7), "1234567890123456.8");
        assert_eq!(f(0.1), "0.1");
        assert_eq!(f(0.000001), "0.000001");
        assert_eq!(f(1e-7), "0.0000001");
        assert_eq!(f(1e-9), "0.000000001");
        assert_eq!(f(1e-10), "1e-10");
        assert_eq!(f(1.2e-7), "0.00000012");
        assert_eq!(f(1.2e-9), "0.0000000012");
        assert_eq!(f(1.2e-10), "1.2e-10");
        assert_eq!(f(1.2345678e-6), "0.0000012345678");
        assert_eq!(f(-1e-7), "-0.0000001");
        assert_eq!(f(-1.5e-10), "-1.5e-10");
        assert_eq!(f(72.9938924), "72.9938924");
        assert_eq!(f(f64::MAX), "1.7976931348623157e+308");
        assert_eq!(f(5e-324), "5e-324");
        assert_eq!(f(2.0f64.powi(60)), "1.152921504606847e+18");
    }

    #[test]
    fn f64_non_finite_is_null() {
        assert_eq!(f(f64::NAN), "null");
        assert_eq!(f(f64::INFINITY), "null");
        assert_eq!(f(f64::NEG_INFINITY), "null");
    }

    #[test]
    fn f64_round_trips() {
        for v in [
            0.1,
            1.0 / 3.0,
            2.0 / 3.0 * 1e300,
            6.02214076e23,
            1e-300,
            123.456,
            9007199254740993.0,
        ] {
            let text = f(v);
            assert_eq!(text.parse::<f64>().ok(), Some(v), "{text}");
        }
    }

    #[test]
    fn reencode_structure_and_order() {
        assert_eq!(
            re(r#" { "b" : 1 , "a" : [ true , false , null , { } , [ ] ] } "#),
            r#"{"b":1,"a":[true,false,null,{},[]]}"#
        );
        assert_eq!(re("[]"), "[]");
        assert_eq!(re("{}"), "{}");
        assert_eq!(re("\"x\""), "\"x\"");
        assert_eq!(re("null"), "null");
        assert_eq!(re("\t\r\n 7 \n"), "7");
    }

    #[test]
    fn reencode_numbers() {
        assert_eq!(
            re("123456789012345678901234567890"),
            "123456789012345678901234567890"
        );
        assert_eq!(re("-98765432109876543210"), "-98765432109876543210");
        assert_eq!(re("0"), "0");
        assert_eq!(re("-0"), "0");
        assert_eq!(re("1.50"), "1.5");
        assert_eq!(re("13.0"), "13.0");
        assert_eq!(re("1e2"), "100.0");
        assert_eq!(re("1E+2"), "100.0");
        assert_eq!(re("-0.0"), "-0.0");
        assert_eq!(re("1e400"), "null");
        assert_eq!(re("-1e400"), "null");
        assert_eq!(re("1e-400"), "0.0");
        assert_eq!(re("0.00001"), "0.00001");
        assert_eq!(re("1000000000000000.0"), "1e+15");
        assert_eq!(re("0.000000000150"), "1.5e-10");
        assert_eq!(
            re("3.14159265358979323846264338327950288419716939937510582097494459"),
            "3.141592653589793"
        );
        assert_eq!(re("[1.0,2,-3.25e1]"), "[1.0,2,-32.5]");
    }

    #[test]
    fn reencode_string_escapes() {
        assert_eq!(re(r#""\/\"\\\b\f\n\r\t""#), r#""/\"\\\b\f\n\r\t""#);
        assert_eq!(re(r#""\u003C\u003e\u0026""#), r#""\u003c\u003e\u0026""#);
        assert_eq!(re("\"<>&\""), r#""\u003c\u003e\u0026""#);
        assert_eq!(re(r#""\u0000\u001F\u0008\u000a""#), r#""\u0000\u001f\b\n""#);
        assert_eq!(re(r#""\u00e9\u20AC""#), "\"é€\"");
        assert_eq!(re(r#""\ud83d\ude00""#), "\"😀\"");
        assert_eq!(re("\"😀\u{7f}/\""), "\"😀\u{7f}/\"");
        assert_eq!(re(r#""\u2028\u2029""#), r#""\u2028\u2029""#);
        assert_eq!(re("\"\u{2028}\u{2029}\""), r#""\u2028\u2029""#);
        assert_eq!(re(r#""\u0022\u005c\u002f""#), r#""\"\\/""#);
    }

    #[test]
    fn reencode_escapes_in_keys() {
        assert_eq!(
            re(r#"{"<a>&\u2028": {"\"\n": 1}}"#),
            r#"{"\u003ca\u003e\u0026\u2028":{"\"\n":1}}"#
        );
    }

    #[test]
    fn reencode_rejects_invalid() {
        for bad in [
            "",
            " ",
            "{",
            "[",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "{1:1}",
            "[1 2]",
            "01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "-",
            "NaN",
            "Infinity",
            "tru",
            "nul",
            "truex",
            "\"abc",
            "\"a\nb\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud83d\"",
            "\"\\ud83dx\"",
            "\"\\ud83d\\u0041\"",
            "\"\\ude00\"",
            "1 2",
            "{}}",
            "[]]",
            "[}",
            "{]",
            "'a'",
            "/* c */ 1",
        ] {
            re_err(bad);
        }
    }

    #[test]
    fn reencode_deep_nesting_is_iterative() {
        let depth = 200_000;
        let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(re(&text), text);
        let text = format!("{}1{}", "{\"a\":[".repeat(depth), "]}".repeat(depth));
        assert_eq!(re(&text), text);
        re_err(&"[".repeat(depth));
    }

    #[test]
    fn reencode_large_input() {
        let mut text = String::from("{\"items\": [");
        let mut expected = String::from("{\"items\":[");
        for i in 0..30_000 {
            if i > 0 {
                text.push_str(", ");
                expected.push(',');
            }
            text.push_str(&format!(
                "{{\"n\": {i}, \"x\": 1.50, \"s\": \"<b>row {i}</b>\"}}"
            ));
            expected.push_str(&format!(
                "{{\"n\":{i},\"x\":1.5,\"s\":\"\\u003cb\\u003erow {i}\\u003c/b\\u003e\"}}"
            ));
        }
        text.push_str("]}");
        expected.push_str("]}");
        assert!(text.len() > 1_000_000);
        assert_eq!(re(&text), expected);
    }

    #[test]
    fn ruby_max_nesting() {
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let mut out = String::new();
        assert!(reencode_with_max_nesting(&mut out, &ok, RUBY_MAX_NESTING).is_ok());
        assert_eq!(out, ok);
        for deep in [
            format!("{}{}", "[".repeat(101), "]".repeat(101)),
            format!("{}{{}}{}", "[".repeat(100), "]".repeat(100)),
            format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100)),
        ] {
            let mut out = String::from("x");
            let e =
                reencode_with_max_nesting(&mut out, &deep, RUBY_MAX_NESTING).expect_err("too deep");
            assert!(e.is_too_deep());
            assert_eq!(out, "x");
            // Without the limit it is fine.
            assert_eq!(re(&deep), deep);
        }
        // A syntax error wins over depth.
        let bad = format!("{}{}", "[".repeat(101), "]".repeat(100));
        let e = reencode_with_max_nesting(&mut String::new(), &bad, RUBY_MAX_NESTING)
            .expect_err("invalid");
        assert!(!e.is_too_deep());
    }

    #[test]
    fn error_display() {
        let e = re_err("[1,]");
        assert_eq!(e.position(), 3);
        assert_eq!(e.to_string(), "invalid JSON at byte 3: expected a value");
    }
}
