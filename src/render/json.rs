//! Rails (ActiveSupport::JSON) encoding of JSON values.
//!
//! This module owns the byte-exact JSON text the relay emits: string escaping
//! ([`push_str`]), doubles with the digits and notation of Ruby's json 2.16.0
//! generator ([`push_f64`]: Grisu2 digits, which are sometimes longer than the
//! shortest round-trip form) and re-encoding of JSON produced elsewhere
//! (Postgres `jsonb`/`json` output, client-supplied values) into the same form
//! Rails would produce after parsing it ([`reencode`]). The rules are in
//! `payloads.md` §0.

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

/// Appends a double the way Ruby's JSON generator (json 2.16.0) prints a Float; NaN/±inf → null.
///
/// Digits are Grisu2's, computed exactly as the float formatter that ruby/json
/// vendors (`ext/json/ext/vendor/fpconv.c`) computes them: they always parse
/// back to `v` but are sometimes longer than the shortest form
/// (`72.99389239999999` for the double nearest 72.9938924; about 1 in 1,200
/// random doubles and 1 in 90 short decimals such as jsonb holds), so Rust's
/// shortest-digit printers cannot be used.
///
/// Notation, with `n` digits and `K` the decimal exponent of the last digit:
/// if `K >= 0` and `|K+n-1| < 15`, the digits, `K` zeros and `.0` (`100.0`);
/// else if `K < 0` and (`K > -7` or `|K+n-1| < 10`), a plain decimal
/// (`0.00001`, `0.00000025`); else scientific `d[.ddd]e±X` with no exponent
/// padding (`1e+15`, `1.5e-10`). Zero prints as `0.0` / `-0.0`.
pub fn push_f64(out: &mut String, v: f64) {
    if !v.is_finite() {
        out.push_str("null");
        return;
    }
    let mut buf = FloatBuf {
        bytes: [0; FloatBuf::CAP],
        len: 0,
    };
    let neg = v.is_sign_negative();
    if neg {
        buf.put(b"-");
    }
    if v == 0.0 {
        buf.put(b"0.0");
    } else {
        let mut digits = [0u8; MAX_DIGITS];
        let (n, k) = grisu2(v.to_bits(), &mut digits);
        emit_digits(&mut buf, &digits[..n], k, neg);
    }
    // The buffer only ever holds ASCII ('-', digits, '.', 'e', '+').
    out.push_str(std::str::from_utf8(buf.as_bytes()).unwrap_or("null"));
}

/// Room for the digits Grisu2 can produce: at most 17 in practice; the bound
/// only has to keep writes in range (extra digits would be dropped).
const MAX_DIGITS: usize = 32;

/// Stack buffer for one formatted double (the reference bounds its output at
/// 32 bytes; the slack keeps every write in range without checks that panic).
struct FloatBuf {
    bytes: [u8; FloatBuf::CAP],
    len: usize,
}

impl FloatBuf {
    const CAP: usize = 64;

    #[inline]
    fn put(&mut self, s: &[u8]) {
        let end = self.len + s.len();
        if let Some(dst) = self.bytes.get_mut(self.len..end) {
            dst.copy_from_slice(s);
            self.len = end;
        }
    }

    #[inline]
    fn put_zeros(&mut self, count: usize) {
        const ZEROS: [u8; 32] = [b'0'; 32];
        self.put(ZEROS.get(..count).unwrap_or(&ZEROS));
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

/// Lays out Grisu2 digits the way ruby/json's formatter does (rules on
/// [`push_f64`]); `k` is the decimal exponent of the last digit.
#[inline]
fn emit_digits(buf: &mut FloatBuf, digits: &[u8], k: i32, neg: bool) {
    let n = digits.len() as i32;
    let exp = (k + n - 1).abs();
    if k >= 0 && exp < 15 {
        buf.put(digits);
        buf.put_zeros(k as usize);
        buf.put(b".0");
    } else if k < 0 && (k > -7 || exp < 10) {
        let int_len = n + k;
        if int_len <= 0 {
            buf.put(b"0.");
            buf.put_zeros(-int_len as usize);
            buf.put(digits);
        } else {
            let (int, frac) = digits.split_at(int_len as usize);
            buf.put(int);
            buf.put(b".");
            buf.put(frac);
        }
    } else {
        // The reference keeps at most 18 digits here (17 after a '-') and
        // derives the exponent's sign from the kept count; Grisu2 never
        // produces that many, but the rule costs nothing to keep.
        let kept = n.min(18 - i32::from(neg));
        let (first, rest) = digits.split_first().unwrap_or((&b'0', &[]));
        buf.put(&[*first]);
        if kept > 1 {
            buf.put(b".");
            buf.put(rest.get(..(kept - 1) as usize).unwrap_or(rest));
        }
        buf.put(if k + kept - 1 < 0 { b"e-" } else { b"e+" });
        let e = exp as u32;
        if e >= 100 {
            buf.put(&[b'0' + (e / 100) as u8, b'0' + (e / 10 % 10) as u8]);
        } else if e >= 10 {
            buf.put(&[b'0' + (e / 10) as u8]);
        }
        buf.put(&[b'0' + (e % 10) as u8]);
    }
}

/// A number `f × 2^e` with a 64-bit significand (Grisu's "diy fp").
#[derive(Clone, Copy)]
struct Fp {
    f: u64,
    e: i32,
}

impl Fp {
    /// Product rounded half-up to 64 bits, as the reference rounds it: the
    /// rounding feeds into the digits, so it must not be "improved".
    #[inline]
    fn mul(self, other: Fp) -> Fp {
        let p = u128::from(self.f) * u128::from(other.f) + (1u128 << 63);
        Fp {
            f: (p >> 64) as u64,
            e: self.e + other.e + 64,
        }
    }
}

/// `10^(CACHED_POW10_FIRST + 8·i)` rounded to nearest as `(f, e)` with the top
/// bit of `f` set. Numeric data: the values Grisu implementations share
/// (checked against exact powers of ten by `cached_powers_are_rounded_powers_of_ten`).
const CACHED_POW10: [(u64, i32); 87] = [
    (0xfa8fd5a0081c0288, -1220),
    (0xbaaee17fa23ebf76, -1193),
    (0x8b16fb203055ac76, -1166),
    (0xcf42894a5dce35ea, -1140),
    (0x9a6bb0aa55653b2d, -1113),
    (0xe61acf033d1a45df, -1087),
    (0xab70fe17c79ac6ca, -1060),
    (0xff77b1fcbebcdc4f, -1034),
    (0xbe5691ef416bd60c, -1007),
    (0x8dd01fad907ffc3c, -980),
    (0xd3515c2831559a83, -954),
    (0x9d71ac8fada6c9b5, -927),
    (0xea9c227723ee8bcb, -901),
    (0xaecc49914078536d, -874),
    (0x823c12795db6ce57, -847),
    (0xc21094364dfb5637, -821),
    (0x9096ea6f3848984f, -794),
    (0xd77485cb25823ac7, -768),
    (0xa086cfcd97bf97f4, -741),
    (0xef340a98172aace5, -715),
    (0xb23867fb2a35b28e, -688),
    (0x84c8d4dfd2c63f3b, -661),
    (0xc5dd44271ad3cdba, -635),
    (0x936b9fcebb25c996, -608),
    (0xdbac6c247d62a584, -582),
    (0xa3ab66580d5fdaf6, -555),
    (0xf3e2f893dec3f126, -529),
    (0xb5b5ada8aaff80b8, -502),
    (0x87625f056c7c4a8b, -475),
    (0xc9bcff6034c13053, -449),
    (0x964e858c91ba2655, -422),
    (0xdff9772470297ebd, -396),
    (0xa6dfbd9fb8e5b88f, -369),
    (0xf8a95fcf88747d94, -343),
    (0xb94470938fa89bcf, -316),
    (0x8a08f0f8bf0f156b, -289),
    (0xcdb02555653131b6, -263),
    (0x993fe2c6d07b7fac, -236),
    (0xe45c10c42a2b3b06, -210),
    (0xaa242499697392d3, -183),
    (0xfd87b5f28300ca0e, -157),
    (0xbce5086492111aeb, -130),
    (0x8cbccc096f5088cc, -103),
    (0xd1b71758e219652c, -77),
    (0x9c40000000000000, -50),
    (0xe8d4a51000000000, -24),
    (0xad78ebc5ac620000, 3),
    (0x813f3978f8940984, 30),
    (0xc097ce7bc90715b3, 56),
    (0x8f7e32ce7bea5c70, 83),
    (0xd5d238a4abe98068, 109),
    (0x9f4f2726179a2245, 136),
    (0xed63a231d4c4fb27, 162),
    (0xb0de65388cc8ada8, 189),
    (0x83c7088e1aab65db, 216),
    (0xc45d1df942711d9a, 242),
    (0x924d692ca61be758, 269),
    (0xda01ee641a708dea, 295),
    (0xa26da3999aef774a, 322),
    (0xf209787bb47d6b85, 348),
    (0xb454e4a179dd1877, 375),
    (0x865b86925b9bc5c2, 402),
    (0xc83553c5c8965d3d, 428),
    (0x952ab45cfa97a0b3, 455),
    (0xde469fbd99a05fe3, 481),
    (0xa59bc234db398c25, 508),
    (0xf6c69a72a3989f5c, 534),
    (0xb7dcbf5354e9bece, 561),
    (0x88fcf317f22241e2, 588),
    (0xcc20ce9bd35c78a5, 614),
    (0x98165af37b2153df, 641),
    (0xe2a0b5dc971f303a, 667),
    (0xa8d9d1535ce3b396, 694),
    (0xfb9b7cd9a4a7443c, 720),
    (0xbb764c4ca7a44410, 747),
    (0x8bab8eefb6409c1a, 774),
    (0xd01fef10a657842c, 800),
    (0x9b10a4e5e9913129, 827),
    (0xe7109bfba19c0c9d, 853),
    (0xac2820d9623bf429, 880),
    (0x80444b5e7aa7cf85, 907),
    (0xbf21e44003acdd2d, 933),
    (0x8e679c2f5e44ff8f, 960),
    (0xd433179d9c8cb841, 986),
    (0x9e19db92b4e31ba9, 1013),
    (0xeb96bf6ebadf77d9, 1039),
    (0xaf87023b9bf0ee6b, 1066),
];
const CACHED_POW10_FIRST: i32 = -348;
const CACHED_POW10_STEP: i32 = 8;

/// Picks the cached power `c` with `e + c.e + 64` in `[-60, -32]` and returns
/// it with its decimal exponent.
///
/// Two neighbouring powers sometimes both fit that window; which one is used
/// changes the digits, so the search starts where the reference starts it
/// (including its odd `+ 87` in the estimate) and walks the same way.
#[inline]
fn cached_pow10(e: i32) -> (Fp, i32) {
    const LAST: i32 = CACHED_POW10.len() as i32 - 1;
    let approx = (f64::from(-(e + 87)) * 0.301_029_995_663_981_14) as i32;
    let mut idx = ((approx - CACHED_POW10_FIRST) / CACHED_POW10_STEP).clamp(0, LAST);
    // Every double's exponent lands in the window within a step or two; the
    // bound only guarantees termination.
    for _ in 0..CACHED_POW10.len() {
        let current = e + CACHED_POW10[idx as usize].1 + 64;
        if current < -60 && idx < LAST {
            idx += 1;
        } else if current > -32 && idx > 0 {
            idx -= 1;
        } else {
            break;
        }
    }
    let (f, ce) = CACHED_POW10[idx as usize];
    (
        Fp { f, e: ce },
        CACHED_POW10_FIRST + idx * CACHED_POW10_STEP,
    )
}

const POW10: [u64; 10] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

/// Grisu2 digits of the finite, nonzero double with these bits (sign
/// ignored), written to `digits`; returns the digit count and the decimal
/// exponent of the last digit.
///
/// Follows the reference step for step, including its boundary computation
/// (the lower gap is halved whenever the significand is a power of two, even
/// at the smallest normal), its ±1 narrowing of the scaled boundaries and its
/// wrapping unsigned arithmetic.
fn grisu2(bits: u64, digits: &mut [u8; MAX_DIGITS]) -> (usize, i32) {
    const FRAC_MASK: u64 = (1 << 52) - 1;
    const HIDDEN: u64 = 1 << 52;
    let biased = ((bits >> 52) & 0x7FF) as i32;
    let w = if biased != 0 {
        Fp {
            f: (bits & FRAC_MASK) | HIDDEN,
            e: biased - 1075,
        }
    } else {
        Fp {
            f: bits & FRAC_MASK,
            e: -1074,
        }
    };

    // Upper boundary (w + ulp/2), normalized so that bit 63 is set.
    let mut upper = Fp {
        f: (w.f << 1) + 1,
        e: w.e - 1,
    };
    let lz = upper.f.leading_zeros() as i32;
    upper.f <<= lz;
    upper.e -= lz;
    let l_shift = if w.f == HIDDEN { 2 } else { 1 };
    let lower = Fp {
        f: ((w.f << l_shift) - 1) << (w.e - l_shift - upper.e) as u32,
        e: upper.e,
    };
    let wz = w.f.leading_zeros() as i32;
    let w = Fp {
        f: w.f << wz,
        e: w.e - wz,
    };

    let (cp, k) = cached_pow10(upper.e);
    let w = w.mul(cp);
    let mut upper = upper.mul(cp);
    let mut lower = lower.mul(cp);
    lower.f = lower.f.wrapping_add(1);
    upper.f = upper.f.wrapping_sub(1);
    generate_digits(w, upper, lower, -k, digits)
}

/// Grisu2's digit generation over the narrowed interval `[lower, upper]`;
/// `k` is the decimal exponent the scaling took away.
#[inline]
fn generate_digits(
    w: Fp,
    upper: Fp,
    lower: Fp,
    mut k: i32,
    digits: &mut [u8; MAX_DIGITS],
) -> (usize, i32) {
    // The cached power put the exponent in [-60, -32].
    let shift = (-upper.e).clamp(32, 60) as u32;
    let one = 1u64 << shift;
    let wfrac = upper.f.wrapping_sub(w.f);
    let mut delta = upper.f.wrapping_sub(lower.f);
    let mut part1 = upper.f >> shift;
    let mut part2 = upper.f & (one - 1);
    let mut n = 0usize;

    // part1 < 2^32, so the integral part has at most 10 digits.
    for kappa in (0..10i32).rev() {
        let div = POW10[kappa as usize];
        let d = part1 / div;
        push_digit(digits, &mut n, d);
        part1 -= d * div;
        let rest = (part1 << shift).wrapping_add(part2);
        if rest <= delta {
            k += kappa;
            round_weed(&mut digits[..n], delta, rest, div << shift, wfrac);
            return (n, k);
        }
    }

    // Fractional digits. delta is at least 1 and grows tenfold per digit
    // while part2 stays below 2^60, so this ends within 19 rounds.
    let mut kappa = 0i32;
    let mut unit = 10u64;
    loop {
        part2 = part2.wrapping_mul(10);
        delta = delta.wrapping_mul(10);
        kappa -= 1;
        push_digit(digits, &mut n, part2 >> shift);
        part2 &= one - 1;
        if part2 < delta {
            k += kappa;
            round_weed(
                &mut digits[..n],
                delta,
                part2,
                one,
                wfrac.wrapping_mul(unit),
            );
            return (n, k);
        }
        unit = unit.wrapping_mul(10);
    }
}

/// Appends digit `d` (< 10) unless it is a leading zero, as the reference does.
#[inline]
fn push_digit(digits: &mut [u8; MAX_DIGITS], n: &mut usize, d: u64) {
    if d != 0 || *n != 0 {
        if let Some(slot) = digits.get_mut(*n) {
            *slot = b'0' + d as u8;
            *n += 1;
        }
    }
}

/// Moves the last digit down towards the scaled value while the result stays
/// inside the interval and gets closer (Grisu2's `round_weed`, reference form).
#[inline]
fn round_weed(digits: &mut [u8], delta: u64, mut rem: u64, kappa: u64, frac: u64) {
    let Some(last) = digits.last_mut() else {
        return;
    };
    while rem < frac
        && delta.wrapping_sub(rem) >= kappa
        && (rem.wrapping_add(kappa) < frac
            || frac - rem > rem.wrapping_add(kappa).wrapping_sub(frac))
    {
        *last = last.wrapping_sub(1);
        rem = rem.wrapping_add(kappa);
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
        // Grisu2 digits, longer than the shortest round-trip form.
        assert_eq!(f(5.526837), "5.5268370000000004");
        assert_eq!(f(72.9938924), "72.99389239999999");
        assert_eq!(f(453.991028), "453.99102799999997");
    }

    #[test]
    fn f64_notation_boundaries() {
        assert_eq!(f(1.0), "1.0");
        assert_eq!(f(-2.5), "-2.5");
        assert_eq!(f(123456789012345.0), "123456789012345.0");
        assert_eq!(f(1e14), "100000000000000.0");
        assert_eq!(f(1.5e15), "1.5e+15");
        assert_eq!(f(1234567890123456.7), "1234567890123456.7");
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
        assert_eq!(re("72.9938924"), "72.99389239999999");
        assert_eq!(re("-453.991028"), "-453.99102799999997");
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

    /// Expected output from ruby/json v2.16.0 itself, not from this module:
    /// its vendored `ext/json/ext/vendor/fpconv.c` was compiled with gcc in a
    /// scratch directory and called as `generate_json_float` calls it, on
    /// doubles given as bit patterns. That harness was compared with
    /// `push_f64` on 57 million inputs (30M random bit patterns; 10M random
    /// 1–9 digit decimals with exponents −12..+22 as jsonb holds them, 5M more
    /// as Postgres prints them, through `reencode`; 4M 10–17 digit decimals;
    /// 4M integers; powers of ten and of two, every binary exponent, and their
    /// neighbours; 3.9M subnormals) with no mismatch. This table keeps a
    /// sample: the spec's examples, both sides of each notation boundary,
    /// extremes, and many values whose Grisu2 digits are longer than the
    /// shortest round-trip digits.
    const RUBY_JSON_2_16_0: &[(u64, &str)] = &[
        (0x40161b7b28954a80, "5.5268370000000004"),
        (0x40523f9beede6f8c, "72.99389239999999"),
        (0x407c5fdb402d16b9, "453.99102799999997"),
        (0x3de49da7e361ce4c, "1.5e-10"),
        (0x3ee4f8b588e368f1, "0.00001"),
        (0x4415af1d78b58c40, "1e+20"),
        (0x4059000000000000, "100.0"),
        (0x0000000000000000, "0.0"),
        (0x8000000000000000, "-0.0"),
        (0x430c6bf526340000, "1e+15"),
        (0x3e90c6f7a0b5ed8d, "0.00000025"),
        (0x3ff8000000000000, "1.5"),
        (0x402a000000000000, "13.0"),
        (0x3ff0000000000000, "1.0"),
        (0x4024000000000000, "10.0"),
        (0xc004000000000000, "-2.5"),
        (0x42dc12218377de40, "123456789012345.0"),
        (0x430c6bf52633fff8, "999999999999999.0"),
        (0x42d6bcc41e900000, "100000000000000.0"),
        (0xc2d6bcc41e900000, "-100000000000000.0"),
        (0x431550f7dca70000, "1.5e+15"),
        (0x43118b54f22aeb00, "1.234567890123456e+15"),
        (0xc30c6bf526340000, "-1e+15"),
        (0x42fc6bf526340000, "500000000000000.0"),
        (0x42dbf78ad3ac0000, "123000000000000.0"),
        (0x43e56a95319d63e1, "1.2345678901234567e+19"),
        (0x4340000000000000, "9.007199254740992e+15"),
        (0x43b0000000000000, "1.152921504606847e+18"),
        (0x43e0000000000000, "9.223372036854776e+18"),
        (0x43f0000000000000, "1.8446744073709552e+19"),
        (0x444b1ae4d6e2ef50, "1e+21"),
        (0x4480f0cf064dd592, "1e+22"),
        (0x44b52d02c7e14af6, "9.999999999999999e+22"),
        (0x54b249ad2594c37d, "1e+100"),
        (0xd4b249ad2594c37d, "-1e+100"),
        (0x55bbe7abd3781eca, "1e+105"),
        (0x2a2b85a0b41d2ef6, "1.5e-105"),
        (0x01a56e1fc2f8f359, "1e-300"),
        (0x01b01297d23ab683, "1.5e-300"),
        (0x0031fa182c40c60d, "1e-307"),
        (0x000730d67819e8d2, "1e-308"),
        (0x000012688b70e62b, "1e-310"),
        (0x00000000000007e8, "1e-320"),
        (0x3fb999999999999a, "0.1"),
        (0x3fe0000000000000, "0.5"),
        (0x3eb0c6f7a0b5ed8d, "0.000001"),
        (0x3e7ad7f29abcaf48, "0.0000001"),
        (0xbe7ad7f29abcaf48, "-0.0000001"),
        (0x3e80823f71155233, "0.000000123"),
        (0x3e112e0be826d695, "0.000000001"),
        (0x3ddb7cdfd9d7bdbb, "1e-10"),
        (0x3e149da7e361ce4c, "0.0000000012"),
        (0x3de07e1fe91b0b70, "1.2e-10"),
        (0xbde49da7e361ce4c, "-1.5e-10"),
        (0x3eb4b66da6c0b2a4, "0.0000012345678"),
        (0x3e951535e4d57213, "0.000000314159"),
        (0x3dc145651592979d, "3.14159e-11"),
        (0x3e112e0be81f75a2, "9.999999999e-10"),
        (0x3fbf9add3746f65f, "0.12345678901234568"),
        (0x3ff3c0ca428c59fb, "1.2345678901234567"),
        (0x4206fee0e1ac0000, "12345678901.5"),
        (0x423cbe991a144000, "123456789012.25"),
        (0x43118b54f22aeb03, "1234567890123456.7"),
        (0x4345ee2a2eb5a5c4, "1.2345678901234568e+16"),
        (0xc3118b54f22aeb03, "-1234567890123456.7"),
        (0x3fd3333333333333, "0.3"),
        (0x3fd3333333333334, "0.30000000000000004"),
        (0x3fe5555555555555, "0.6666666666666666"),
        (0x3fd5555555555555, "0.3333333333333333"),
        (0x400921fb54442d18, "3.141592653589793"),
        (0x4005bf0a8b145769, "2.718281828459045"),
        (0x3ff199999999999a, "1.1"),
        (0x4005666666666666, "2.675"),
        (0x405edd2f1a9fbe77, "123.456"),
        (0xc040aaa9930be0df, "-33.3333"),
        (0x4029800000000000, "12.75"),
        (0x3f847ae147ae147b, "0.01"),
        (0x3f50624dd2f1a9fc, "0.001"),
        (0x3f1a36e2eb1c432d, "0.0001"),
        (0x3e45798ee2308c3a, "0.00000001"),
        (0x3e8ad7f29abcaf48, "0.0000002"),
        (0x3eb091f169006c62, "0.000000987654321"),
        (0x3e7ad7f29f3d9b30, "0.000000100000001"),
        (0x7fefffffffffffff, "1.7976931348623157e+308"),
        (0xffefffffffffffff, "-1.7976931348623157e+308"),
        (0x0010000000000000, "2.2250738585072014e-308"),
        (0x000fffffffffffff, "2.225073858507201e-308"),
        (0x0000000000000001, "5e-324"),
        (0x8000000000000001, "-5e-324"),
        (0x0010000000000001, "2.225073858507202e-308"),
        (0x001fffffffffffff, "4.4501477170144023e-308"),
        (0x0020000000000000, "4.450147717014403e-308"),
        (0x3fefffffffffffff, "0.9999999999999999"),
        (0x3ff0000000000001, "1.0000000000000002"),
        (0x433fffffffffffff, "9.007199254740991e+15"),
        (0x4330000000000000, "4.503599627370496e+15"),
        (0x432fffffffffffff, "4503599627370495.5"),
        (0x7fe0000000000000, "8.98846567431158e+307"),
        (0x0000000000000002, "1e-323"),
        (0x0000000000000003, "1.5e-323"),
        (0x0008000000000000, "1.1125369292536007e-308"),
        (0x0000000100000000, "2.121995791e-314"),
        (0x3cb0000000000000, "2.220446049250313e-16"),
        (0x3ca0000000000000, "1.1102230246251565e-16"),
        (0x4050000000000000, "64.0"),
        (0x40f86a0000000000, "100000.0"),
        (0x412e848000000000, "1000000.0"),
        (0xc050c38811b1d92b, "-67.05517999999999"),
        (0x4043878811b1d92b, "39.058839999999996"),
        (0xc083f9d805e5f30e, "-639.2304799999999"),
        (0xc03a9f8811b1d92b, "-26.623169999999998"),
        (0xc01117389cff7fa8, "-4.2726769000000004"),
        (0xc0868c67fa1a0cf2, "-721.5507700000001"),
        (0x4026f827fa1a0cf2, "11.484680000000001"),
        (0x40190f536e3c1dbe, "6.2649667000000004"),
        (0x4005b827fa1a0cf2, "2.7149200000000002"),
        (0xc032c08556ec75e0, "-18.752034600000002"),
        (0xc01a77d805e5f30e, "-6.6170349999999996"),
        (0xc044fdde7a743a64, "-41.983351999999996"),
        (0xc013c7d805e5f30e, "-4.9451599999999996"),
        (0xc02d4f45861c0e53, "-14.654827299999999"),
        (0xc083ef37ee4e26d5, "-637.9023100000001"),
        (0x40531c7e62dc6e2b, "76.44521400000001"),
        (0xc0012434e3369b9d, "-2.1426789999999998"),
        (0xc0b5647ffa1a0cf2, "-5476.4999100000005"),
        (0x40f2ae8b1d7dbf48, "76520.69469999999"),
        (0x401857c5403b8465, "6.0857133899999996"),
        (0xc010be7e62dc6e2b, "-4.1860290000000004"),
        (0xc00d2caf4049f211, "-3.6468186399999998"),
        (0xc0477d9c6e602fec, "-46.981336400000004"),
        (0xc0810d77ee4e26d5, "-545.6835600000001"),
        (0xbff100084b530f9d, "-1.0625079100000001"),
        (0xc022578811b1d92b, "-9.170959999999999"),
        (0xc0c0a1b411b1d92b, "-8515.406789999999"),
        (0xc0664b4e5710880e, "-178.35331300000001"),
        (0xc01f0877ee4e26d5, "-7.7582700000000004"),
        (0xc03b2827fa1a0cf2, "-27.156860000000002"),
        (0xc0720b0811b1d92b, "-288.68946999999997"),
        (0xc0a61bd7ee4e26d5, "-2829.9217400000002"),
        (0x40059827fa1a0cf2, "2.6992950000000002"),
        (0x402347d805e5f30e, "9.640319999999999"),
        (0x407820a7fa1a0cf2, "386.04101000000003"),
        (0xc0762027fa1a0cf2, "-354.00976000000003"),
        (0xc085cdab4bf8fcd6, "-697.7086409999999"),
        (0x401c2877ee4e26d5, "7.0395200000000004"),
        (0x3ff833b04b8cc64d, "1.5126193000000001"),
        (0x4014b1819d2391d5, "5.1733459999999996"),
        (0x40b02b2fe28240b8, "4139.1870500000005"),
        (0xc0c079a3e28240b8, "-8435.280350000001"),
        (0x4056721e4b44a1f1, "89.78309900000001"),
        (0xc002d042cb56ab08, "-2.3516899000000002"),
        (0x4042d1e8a8cb65c4, "37.639912699999996"),
        (0x3fa6b484d76ab580, "0.044345999999999997"),
        (0x3e265df00d0c1914, "0.0000000026038549999999998"),
        (0x3e72d0e447e16abd, "0.00000007009500000000001"),
        (0x3f6903630a311e6b, "0.0030533728000000002"),
        (0x3f728621a8d86212, "0.0045224489999999996"),
        (0x3fa14a06b44f2786, "0.033767900000000003"),
        (0xbe545804aba9e5bf, "-0.000000018946659999999998"),
        (0xbf411b4edb9d599f, "-0.0005220542000000001"),
        (0x3f687a029cdfc194, "0.0029878665000000002"),
        (0x3ed4981285e98e79, "0.0000049099999999999996"),
        (0xbe3e72328d23991d, "-0.0000000070887813000000004"),
        (0x3f5aa4a807c9e288, "0.0016261712000000001"),
        (0xbea8ff7cd9d683f6, "-0.0000007449984200000001"),
        (0x3fe3a3a591748710, "0.6137264099999999"),
        (0x3ea042508d2b8296, "0.0000004845571999999999"),
        (0xbe90f0c4c9946d0e, "-0.00000025243316200000003"),
        (0xbf454434e3369b9d, "-0.0006489999999999999"),
        (0xbf16713bc48bbc8b, "-0.00008561065000000001"),
        (0xbed4981285e98e79, "-0.0000049099999999999996"),
        (0x3f7593b04b8cc64d, "0.0052678000000000004"),
        (0xbe40b2d8a2bd6109, "-0.000000007775899999999999"),
        (0xbfcafb40a891af15, "-0.21079262000000001"),
        (0xbeac539b08c742ea, "-0.0000008441980000000001"),
        (0xbfa8abe985f3a80b, "-0.048186585999999997"),
        (0x3ee26a3c9ea613e4, "0.000008780950300000001"),
        (0xbfac6d09ee964b30, "-0.055519399999999997"),
        (0x3e1a07db2df52c5c, "0.0000000015151854699999999"),
        (0x3e777e65b6fcb223, "0.00000008752099999999999"),
        (0xbed25e7ec9e0377b, "-0.0000043795399999999996"),
        (0xbfacca664025dfe3, "-0.056231684999999997"),
        (0x3f766adb402d16b9, "0.0054729999999999996"),
        (0xbed06777297f4c91, "-0.0000039110570000000004"),
        (0xbe9faea227eb996a, "-0.00000047210100000000003"),
        (0xbf8148924009048b, "-0.008439199999999999"),
        (0xbfb6fe2e6ea85447, "-0.08981599999999999"),
        (0x4405c42975d26c4a, "5.0189572999999996e+19"),
        (0x441c7a4b9d3281d4, "1.3133028600000001e+20"),
        (0xc4701b700d43a7f0, "-4.753999999999999e+21"),
        (0x4402486eb020d502, "4.2157587000000004e+19"),
        (0xc479d9f855e87068, "-7.630000000000001e+21"),
        (0x444ae01f18d30f88, "9.915299999999999e+20"),
        (0x445cdbc55d03eb52, "2.1293799999999999e+21"),
        (0xc48b813e1a4fe1d2, "-1.6236000000000001e+22"),
        (0xc44f27c0285680fc, "-1.1494268000000001e+21"),
        (0x44345028e5322f66, "3.7471100000000003e+20"),
        (0xc4663fca82f9a3b2, "-3.2833999999999997e+21"),
        (0xc3fd3696582a1b34, "-3.3680562899999998e+19"),
        (0xc47a039a7a036694, "-7.678000000000001e+21"),
        (0xc45af513b1d2fa60, "-1.9891000000000001e+21"),
        (0x4427038324a737fc, "2.1226409999999998e+20"),
        (0x44b017f7df96be18, "7.600000000000001e+22"),
        (0x44af5718987664b4, "7.3999999999999996e+22"),
        (0x441273cefe3758a6, "8.509656999999999e+19"),
        (0x449839a2ecdad2b0, "2.8600000000000002e+22"),
        (0xc4704c028cb871ce, "-4.809999999999999e+21"),
        (0x447dd620516f6f5e, "8.806159999999999e+21"),
        (0x4470eb9ac1ca76cc, "4.993999999999999e+21"),
        (0x44952d02c7e14af6, "2.4999999999999998e+22"),
        (0xc471ec57f5c60f86, "-5.289999999999999e+21"),
        (0x43e14f35a4cde286, "9.978196830000001e+18"),
        (0xc4796d07887fc196, "-7.504399999999999e+21"),
        (0xc47accd4d33061be, "-7.910000000000001e+21"),
        (0xc3e0ea0dbc3ae158, "-9.750414009999999e+18"),
        (0xc42851ada579e392, "-2.2430369999999998e+20"),
        (0xc44291a0f353d960, "-6.850700959999999e+20"),
        (0x4462425006caea88, "2.6945577599999997e+21"),
        (0x443902b2a418148c, "4.6136300000000003e+20"),
        (0x4442c041e5dea7be, "6.917900000000001e+20"),
        (0x44a37b547a731c02, "4.6000000000000004e+22"),
        (0xc4af5718987664b4, "-7.3999999999999996e+22"),
        (0xc0533804ea4a8c15, "-76.8753"),
        (0x40d282828f5c28f6, "18954.04"),
        (0x40f0beb666666666, "68587.4"),
        (0xc12454ec0f5c28f6, "-666230.03"),
        (0xc084c9999999999a, "-665.2"),
        (0x41103035cccccccd, "265229.45"),
        (0xc0059374bc6a7efa, "-2.697"),
        (0x40f85dc6e147ae14, "99804.43"),
        (0x40d145599999999a, "17685.4"),
        (0xc0bbbd70a3d70a3d, "-7101.44"),
        (0x3fb7d1c77dad7fd5, "0.0930447275"),
        (0x3ed5f2d351c9cf66, "0.000005232939"),
        (0xbf16ce789e774eec, "-0.000087"),
        (0x3f40fe1272a6ef20, "0.000518569"),
        (0x3f7fd4c9c65d1c10, "0.00777129"),
        (0xbed92a737110e454, "-0.000006"),
        (0xbebedebd6525c993, "-0.00000184"),
        (0x3ed19ca454cd509a, "0.000004199"),
        (0xbe75798ee2308c3a, "-0.00000008"),
        (0xbf817324baca6bc9, "-0.0085204"),
        (0x3dd7e30b3b0057d2, "8.69e-11"),
        (0xc370e0198eaee000, "-7.6e+16"),
        (0x3d959f262cdc55c3, "4.9162e-12"),
        (0xc40c7de98211889c, "-6.569772e+19"),
        (0xc33596793bd5cb80, "-6.07642195e+15"),
        (0x3e072166f601516e, "6.7318549e-10"),
        (0xbdde3c8fd606ea4d, "-1.1e-10"),
        (0xc39370aaba02cf40, "-3.502018e+17"),
        (0xc3cbc16d674ec800, "-4e+18"),
        (0x3d8b449455072ace, "3.1e-12"),
        (0x418d4ca280000000, "61445200.0"),
        (0xc2a047ea52890000, "-8950530000000.0"),
        (0xc1bfa0ec80000000, "-530640000.0"),
        (0xc1fa862940000000, "-7120000000.0"),
        (0xc0e4b4c000000000, "-42406.0"),
        (0xc1f9f4db8fe00000, "-6967638270.0"),
        (0x40d9438000000000, "25870.0"),
        (0x42d5f10713318000, "96499800000000.0"),
        (0xc2a03e2b45a00000, "-8929600000000.0"),
        (0x41ed39bf4b800000, "3922590300.0"),
        (0x54aa2d3581165475, "7.1568477755286155e+99"),
        (0xc3631448ff3470da, "-4.2962626474641104e+16"),
        (0xc3996c8b41a37f5a, "-4.5799806561627917e+17"),
        (0x437d1491fd57572e, "1.3096626524451299e+17"),
        (0x438d1ce9acf8c6ae, "2.6222605694565318e+17"),
        (0x437feaea03ca2a84, "1.4374424135772781e+17"),
        (0xc8be1be3cc62b7f3, "-2.6228589978455252e+42"),
        (0x968da639ad0fc683, "-4.8418083364838843e-200"),
        (0xf35e20257fd0002a, "-5.2658896944352297e+247"),
        (0xffedb251df43851b, "-1.6682907881872479e+308"),
        (0x73593eb342c300b4, "4.4127619541722777e+247"),
        (0x435e65c15c9d51a4, "3.4224521832908432e+16"),
        (0xc35355c284ac6f0a, "-2.1769273981647912e+16"),
        (0xbc4f6d1ee5783bf8, "-3.4072411440801302e-18"),
        (0xb6efc37353b4a52a, "-4.4510113643646738e-44"),
        (0x0052a2691d028777, "4.1462952804572676e-307"),
        (0x435891e4e7c6b686, "2.7663247072746008e+16"),
        (0xc35ca3ee9c211e64, "-3.2246178259433872e+16"),
        (0x437aed345bc0e74a, "1.2126653644685021e+17"),
        (0x7f90c8899a1bb41f, "2.9464172292210427e+306"),
        (0xeaa97d0f956939d6, "-6.3931023629223494e+205"),
        (0xc4067dfeaa15e3ea, "-5.1863406316428804e+19"),
        (0xc378b7d416679ff4, "-1.1132033564632659e+17"),
        (0x4cfe1ef65d41aa55, "7.7443992343166105e+62"),
        (0xc3601ca971464e08, "-3.6280909622833216e+16"),
        (0xca1e2e81b3c703de, "-1.1027638788084027e+49"),
        (0x052d88251f5403ff, "9.929885892397683e-284"),
        (0x783a0a96832d090e, "1.3757507615445127e+271"),
        (0x0213cfad9486b69a, "1.1833031516420372e-298"),
        (0xcbbd18ed48bddb7d, "-7.134654528124233e+56"),
        (0xa331f889cd61ac01, "-3.772686311177724e-139"),
        (0xbbdfa4af0ce45c14, "-2.6802914319586728e-20"),
        (0x18444d3148c489c6, "8.899418083183354e-192"),
        (0x8917bd790b515cfa, "-7.362526737053796e-265"),
        (0x07ccbafd6b4a16b5, "4.2486996592510733e-271"),
        (0x4f3a1df7a5cec4e1, "4.614485089670969e+73"),
        (0x2f612b2cf4992061, "1.8099535643404462e-80"),
        (0xdb72feeb3c6dea5e, "-3.370816958392168e+132"),
        (0xf06803119e240aaf, "-2.9823236114251595e+233"),
        (0x66eee5497f267c6c, "6.7214765967981544e+187"),
        (0x439992726c08adda, "4.6066525146889997e+17"),
        (0x441347cda21eaae6, "8.891552679999999e+19"),
        (0x440a63789ac1ab32, "6.0847874360000004e+19"),
        (0xbb86c93d16bf59cd, "-6.0314273772068825e-22"),
        (0xc393097568136102, "-3.4293916284329997e+17"),
        (0xc3eadd716cdef228, "-1.5486625017999999e+19"),
        (0xc3c00ddb379964a6, "-2.3136434222945597e+18"),
        (0x43f17aa27a402ee6, "2.0151963068000002e+19"),
        (0x43b182f2784774e2, "1.2618374440259999e+18"),
        (0xc3d9ebba11d8571a, "-7.471164225127999e+18"),
        (0xc36fe80fbe4ad0e4, "-7.1847028742063904e+16"),
        (0x43d8be2f88061e46, "7.131659055000001e+18"),
        (0xc0457023ec7b87c3, "-42.876096306149996"),
        (0xc0f5b8d09145a2a2, "-88973.03546680001"),
        (0xc38ab6d3c2311596, "-2.4061984021851002e+17"),
        (0x3fb79bbc62598149, "0.0922200908767127"),
        (0x3f5aaf557537eefe, "0.0016287169027"),
        (0x408394f61fdfd231, "626.6201779829045"),
        (0x3ef9efe25587bc10, "0.00002473549588616"),
        (0x3e90d384fbcc8a7d, "0.00000025073063252189"),
        (0x408370b97efda5cc, "622.090574247"),
        (0xc1fd6d21b851f6f3, "-7899061125.12279"),
        (0xc2c4ca5170fd9b53, "-45718364617526.65"),
        (0x423479bd62c00000, "87941800640.0"),
        (0xbe3a14e280a97229, "-0.00000000607259132787"),
        (0x0000000000006ec5, "1.401e-319"),
        (0x000b447d7ddbbea9, "1.566944273172587e-308"),
        (0x0008e449d9fc69ad, "1.2365502921692925e-308"),
        (0x0010000000006233, "2.2250738585196217e-308"),
        (0x800248555d5e0809, "-3.17428002300638e-309"),
        (0x00000000000174c8, "4.71497e-319"),
        (0x800197ab95ff728f, "-2.21459090071528e-309"),
        (0x8001ba84af72ea0c, "-2.403896254875884e-309"),
        (0x000fffffffff334e, "2.2250738584813114e-308"),
        (0x800afe5e8d5fe886, "-1.5288524553439946e-308"),
        (0x800607b91f0040ca, "-8.385981395875612e-309"),
        (0x800364fdcb605479, "-4.720629914493518e-309"),
        (0x000f50ecd45c0d22, "2.1299677674144392e-308"),
        (0x800754667df004f3, "-1.0193186980588602e-308"),
        (0x8009a16ee4365186, "-1.3392995351290148e-308"),
        (0x4324391996b638bc, "2.846140799851614e+15"),
        (0xc34377d93484528e, "-1.0959598660396316e+16"),
        (0xc3af160c2c4e7941, "-1.1199956245490321e+18"),
        (0xc3434d2c6eb34086, "-1.0865755577286924e+16"),
        (0xc3be7c68f48993e8, "-2.1967461177394401e+18"),
        (0x43ca7ec481229b0d, "3.818358701924162e+18"),
        (0x43283273c6e08be0, "3.405436140144112e+15"),
        (0x4334cbf146dc45b6, "5.85373667061087e+15"),
        (0xc39289b0c915bb1c, "-3.3394828554789043e+17"),
        (0xc34bb47988d22473, "-1.559651690140695e+16"),
        (0x412d05cc00000000, "951014.0"),
        (0x412996e800000000, "838516.0"),
        (0xc136fc3400000000, "-1506356.0"),
        (0xc17ac5b9c0000000, "-28072860.0"),
        (0x4136c18900000000, "1491337.0"),
        (0x60874eac2e8727b4, "1.0000000000000004e+157"),
        (0x80159283684dba79, "-3.000000000000001e-308"),
        (0x80045080ae75f215, "-5.999999999999987e-309"),
        (0xe8b11f9e62fe4443, "-1.999999999999998e+196"),
        (0xa27382cc34ca242b, "-1.0000000000000006e-142"),
        (0xbcff86735614d6a5, "-6.999999999999999e-15"),
        (0x1fb806dbd3fdb6cb, "7.000000000000001e-156"),
        (0x96b6f6a8f3fa0834, "-3.000000000000001e-199"),
        (0x5b4b0cbbe5057ac1, "5.999999999999998e+131"),
        (0x4f43cf2e271a0204, "7.000000000000006e+73"),
        (0xff9116ac579aac23, "-3.000000000000003e+306"),
        (0x2b617f7d4ed8c340, "1.0000000000000004e-99"),
        (0xb99039d66589687f, "-1.9999999999999997e-31"),
        (0x6b3f25c186a6f051, "4.000000000000002e+208"),
        (0xfce40aabc6c32a39, "-4.0000000000000004e+293"),
        (0x4360000000000002, "3.6028797018963984e+16"),
        (0xc369a7a6a1abdf4a, "-5.7769668292573776e+16"),
        (0x14302476120c5203, "1.9180144433281008e-211"),
        (0xb8514b9c97d847ac, "-2.0330595826342228e-37"),
        (0x1c892d08b011eba4, "3.2572996982115192e-171"),
        (0x3a471daeb450d557, "5.8352854069514974e-28"),
        (0x456f8b84e9105673, "3.0508448890726542e+26"),
        (0xb1564ed763a9c23b, "-5.0503463541891534e-71"),
        (0xc352bf45ca479f62, "-2.1107424192527752e+16"),
        (0xb432fbda4b1dcc4f, "-3.0242937654303373e-57"),
    ];

    #[test]
    fn f64_matches_ruby_json_reference() {
        let mut bad = Vec::new();
        for &(bits, expected) in RUBY_JSON_2_16_0 {
            let v = f64::from_bits(bits);
            let got = f(v);
            if got != expected {
                bad.push(format!("{bits:#018x}: got {got}, want {expected}"));
            }
            assert_eq!(
                got.parse::<f64>().ok(),
                Some(v),
                "{got} does not round-trip"
            );
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    /// Minimal little-endian bignum helpers for checking the cached powers.
    fn big_mul_small(n: &mut Vec<u32>, m: u32) {
        let mut carry = 0u64;
        for limb in n.iter_mut() {
            let p = u64::from(*limb) * u64::from(m) + carry;
            *limb = p as u32;
            carry = p >> 32;
        }
        if carry != 0 {
            n.push(carry as u32);
        }
    }

    fn big_div_small(n: &mut Vec<u32>, d: u32) {
        let mut rem = 0u64;
        for limb in n.iter_mut().rev() {
            let cur = (rem << 32) | u64::from(*limb);
            *limb = (cur / u64::from(d)) as u32;
            rem = cur % u64::from(d);
        }
        while n.last() == Some(&0) {
            n.pop();
        }
    }

    fn big_bit_len(n: &[u32]) -> i32 {
        let top = *n.last().unwrap();
        (n.len() as i32 - 1) * 32 + 32 - top.leading_zeros() as i32
    }

    /// Bit `i` of `n`; negative positions read as zero (small powers are
    /// shifted up to 64 bits).
    fn big_bit(n: &[u32], i: i32) -> u64 {
        if i < 0 {
            return 0;
        }
        u64::from((n[(i / 32) as usize] >> (i % 32)) & 1)
    }

    /// `n` rounded to its top 64 bits: (significand, bits dropped).
    fn big_top64_rounded(n: &[u32]) -> (u64, i32) {
        let drop = big_bit_len(n) - 64;
        let mut f = 0u64;
        for i in (drop..drop + 64).rev() {
            f = f << 1 | big_bit(n, i);
        }
        // No power of ten lies exactly halfway, so the next bit decides.
        if big_bit(n, drop - 1) == 1 {
            f += 1;
        }
        (f, drop)
    }

    #[test]
    fn cached_powers_are_rounded_powers_of_ten() {
        for (i, &(f, e)) in CACHED_POW10.iter().enumerate() {
            let k = CACHED_POW10_FIRST + CACHED_POW10_STEP * i as i32;
            let (want_f, want_e) = if k >= 0 {
                let mut n = vec![1u32];
                for _ in 0..k {
                    big_mul_small(&mut n, 10);
                }
                big_top64_rounded(&n)
            } else {
                // floor(2^m / 10^-k) keeps well over 64 significant bits.
                let m = -k * 4 + 80;
                let mut n = vec![0u32; (m / 32) as usize];
                n.push(1 << (m % 32));
                for _ in 0..-k {
                    big_div_small(&mut n, 10);
                }
                let (f, drop) = big_top64_rounded(&n);
                (f, drop - m)
            };
            assert_eq!((f, e), (want_f, want_e), "10^{k}");
        }
    }

    #[test]
    fn cached_power_search_stays_in_the_window() {
        // Every exponent a normalized boundary of a nonzero double can have.
        for e in -1137..=960 {
            let (cp, _) = cached_pow10(e);
            let current = e + cp.e + 64;
            assert!((-60..=-32).contains(&current), "e={e}: {current}");
        }
    }
}
