//! Properties of the pure parsers and encoders, over generated input (proptest), plus a replay of
//! the fuzz seeds and of every input the fuzzer ever flagged (`fuzz/seeds`, `fuzz/regressions`,
//! and `fuzz/artifacts` when present), so what cargo-fuzz checks on nightly is checked on stable
//! in every `cargo test`. The checks themselves live in `fuzz/checks.rs`; how to fuzz:
//! docs/reliability.md.

#[path = "../fuzz/checks.rs"]
mod checks;

use pgcable::cable::channels::{parse_identifier, Channel};
use pgcable::cable::frame::{parse_command, Command};
use pgcable::feed::event;
use pgcable::render::json::{push_f64, reencode};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Generators

/// Characters that make parsers and encoders work: JSON syntax, escapes, HTML, controls,
/// line separators, multi-byte and astral characters, SQL metacharacters.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::sample::select(vec![
            '{', '}', '[', ']', '"', '\\', ':', ',', ' ', '\n', '\t', '\r', '\u{0}', '\u{1f}',
            '<', '>', '&', '/', '\'', ';', '-', '%', '\u{7f}', '\u{2028}', '\u{2029}', 'é',
            '\u{fffd}', '\u{feff}', '😀', '\u{10ffff}', 'u', 'd', '8', '0', 'e', '.', '+',
        ]),
        3 => prop::char::range('a', 'z'),
        1 => any::<char>(),
    ]
}

fn tricky_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..max).prop_map(|v| v.into_iter().collect())
}

/// A JSON value, kept with the exact number it stands for.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    /// An integer literal: its digits (with `-`), any length.
    Int(String),
    Float(f64),
    Str(String),
    Arr(Vec<J>),
    /// Members in order; keys unique (jsonb output never repeats one).
    Obj(Vec<(String, J)>),
}

fn json_value() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(|i| J::Int(i.to_string())),
        (any::<bool>(), prop::collection::vec(0u8..10, 1..45)).prop_map(|(neg, d)| {
            let s: String = d.iter().map(|x| char::from(b'0' + x)).collect();
            let trimmed = s.trim_start_matches('0');
            let s = if trimmed.is_empty() { "0" } else { trimmed };
            J::Int(if neg { format!("-{s}") } else { s.to_string() })
        }),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(J::Float),
        prop::sample::select(vec![
            0.1,
            100.0,
            1e15,
            1e16,
            1.5e-10,
            1e-7,
            0.00001,
            72.9938924,
            -0.0,
            0.0,
            5e-324,
            f64::MAX
        ])
        .prop_map(J::Float),
        tricky_string(12).prop_map(J::Str),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            prop::collection::vec((tricky_string(8), inner), 0..6).prop_map(|members| {
                let mut seen = std::collections::HashSet::new();
                J::Obj(
                    members
                        .into_iter()
                        .filter(|(k, _)| seen.insert(k.clone()))
                        .collect(),
                )
            }),
        ]
    })
}

/// How to write a value: whitespace between tokens, and which characters to escape.
#[derive(Debug, Clone, Copy)]
struct Style {
    spaces: bool,
    escape_all: bool,
    exponent_floats: bool,
}

fn style() -> impl Strategy<Value = Style> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(spaces, escape_all, exponent_floats)| Style {
            spaces,
            escape_all,
            exponent_floats,
        },
    )
}

fn write_json(out: &mut String, v: &J, s: Style) {
    let ws = if s.spaces { " \n\t " } else { "" };
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Int(d) => out.push_str(d),
        J::Float(f) => {
            if s.exponent_floats {
                out.push_str(&format!("{f:e}"))
            } else {
                out.push_str(&format!("{f:?}"))
            }
        }
        J::Str(text) => write_string(out, text, s),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(ws);
                write_json(out, item, s);
                out.push_str(ws);
            }
            out.push(']');
        }
        J::Obj(members) => {
            out.push('{');
            for (i, (k, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(ws);
                write_string(out, k, s);
                out.push_str(ws);
                out.push(':');
                out.push_str(ws);
                write_json(out, item, s);
            }
            out.push_str(ws);
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, text: &str, s: Style) {
    if !s.escape_all {
        out.push_str(&serde_json::to_string(text).expect("string"));
        return;
    }
    out.push('"');
    for c in text.chars() {
        let mut units = [0u16; 2];
        for u in c.encode_utf16(&mut units) {
            out.push_str(&format!("\\u{u:04X}"));
        }
    }
    out.push('"');
}

/// A small strict JSON reader that keeps numbers exact (integers as digits, floats correctly
/// rounded by `str::parse`) and object members in order.
struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn parse(text: &str) -> Result<J, String> {
        let mut r = Reader {
            b: text.as_bytes(),
            i: 0,
        };
        let v = r.value()?;
        if r.i != r.b.len() {
            return Err(format!("trailing input at {}", r.i));
        }
        Ok(v)
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", c as char, self.i))
        }
    }

    fn value(&mut self) -> Result<J, String> {
        match self.b.get(self.i) {
            Some(b'n') => self.word("null", J::Null),
            Some(b't') => self.word("true", J::Bool(true)),
            Some(b'f') => self.word("false", J::Bool(false)),
            Some(b'"') => self.string().map(J::Str),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(J::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(J::Arr(items));
                        }
                        _ => return Err(format!("bad array at {}", self.i)),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(J::Obj(members));
                }
                loop {
                    let k = self.string()?;
                    self.eat(b':')?;
                    members.push((k, self.value()?));
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(J::Obj(members));
                        }
                        _ => return Err(format!("bad object at {}", self.i)),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while matches!(
                    self.b.get(self.i),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.i += 1;
                }
                let text =
                    std::str::from_utf8(&self.b[start..self.i]).map_err(|e| e.to_string())?;
                if text.contains(['.', 'e', 'E']) {
                    // JSON number syntax: digits on both sides of the point.
                    if text.contains(".e") || text.ends_with('.') || text.contains("-.") {
                        return Err(format!("bad number {text}"));
                    }
                    text.parse::<f64>()
                        .map(J::Float)
                        .map_err(|e| format!("{text}: {e}"))
                } else {
                    let digits = text.strip_prefix('-').unwrap_or(text);
                    if digits.is_empty()
                        || !digits.bytes().all(|b| b.is_ascii_digit())
                        || (digits.len() > 1 && digits.starts_with('0'))
                    {
                        return Err(format!("bad integer {text}"));
                    }
                    Ok(J::Int(text.to_string()))
                }
            }
            _ => Err(format!("expected a value at {}", self.i)),
        }
    }

    fn word(&mut self, w: &str, v: J) -> Result<J, String> {
        if self.b[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(format!("bad literal at {}", self.i))
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self.b.get(self.i..self.i + 4).ok_or("short \\u")?;
        self.i += 4;
        u32::from_str_radix(std::str::from_utf8(h).map_err(|e| e.to_string())?, 16)
            .map_err(|e| e.to_string())
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = String::new();
        loop {
            let rest = std::str::from_utf8(&self.b[self.i..]).map_err(|e| e.to_string())?;
            let c = rest.chars().next().ok_or("unterminated string")?;
            self.i += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let e = *self.b.get(self.i).ok_or("bad escape")?;
                    self.i += 1;
                    out.push(match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                self.eat(b'\\')?;
                                self.eat(b'u')?;
                                let lo = self.hex4()?;
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(cp).ok_or("lone surrogate")?
                        }
                        _ => return Err("bad escape".into()),
                    });
                }
                c if (c as u32) < 0x20 => return Err("raw control character".into()),
                c => out.push(c),
            }
        }
    }
}

/// Exact equality: floats bit for bit, integers digit for digit (`-0` reads as `0` in Ruby),
/// members in order.
fn exactly_equal(input: &J, output: &J) -> bool {
    match (input, output) {
        (J::Null, J::Null) => true,
        (J::Bool(a), J::Bool(b)) => a == b,
        (J::Int(a), J::Int(b)) => a == b || (a == "-0" && b == "0"),
        (J::Float(a), J::Float(b)) => a.to_bits() == b.to_bits(),
        (J::Str(a), J::Str(b)) => a == b,
        (J::Arr(a), J::Arr(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| exactly_equal(x, y))
        }
        (J::Obj(a), J::Obj(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, x), (kb, y))| ka == kb && exactly_equal(x, y))
        }
        _ => false,
    }
}

/// Checks `out` (what `push_f64` printed for `v`) against the notation rules of payloads.md §0,
/// rebuilding the expected text from the digits and exponent the output itself carries.
fn check_notation(out: &str, v: f64) -> Result<(), String> {
    let s = match out.strip_prefix('-') {
        Some(rest) => {
            if !v.is_sign_negative() {
                return Err("minus sign on a positive number".into());
            }
            rest
        }
        None => {
            if v.is_sign_negative() {
                return Err("negative number without a sign".into());
            }
            out
        }
    };
    if v == 0.0 {
        return (s == "0.0")
            .then_some(())
            .ok_or_else(|| format!("zero as {out}"));
    }
    // (digits, K): value = digits × 10^K.
    let (digits, k): (String, i32) = if let Some((mantissa, exp)) = s.split_once('e') {
        let e: i32 = exp.parse().map_err(|_| format!("exponent {exp}"))?;
        if !(exp.starts_with('+') || exp.starts_with('-')) {
            return Err(format!("exponent without sign in {out}"));
        }
        let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        (digits.clone(), e - (digits.len() as i32 - 1))
    } else {
        let (int, frac) = s
            .split_once('.')
            .ok_or_else(|| format!("no point in {out}"))?;
        if frac == "0" {
            let trimmed = int.trim_end_matches('0');
            (trimmed.to_string(), (int.len() - trimmed.len()) as i32)
        } else {
            let all = format!("{int}{frac}");
            (
                all.trim_start_matches('0').to_string(),
                -(frac.len() as i32),
            )
        }
    };
    if digits.is_empty() || digits.ends_with('0') || digits.starts_with('0') {
        return Err(format!("digits {digits:?} of {out}"));
    }
    let n = digits.len() as i32;
    let e = k + n - 1;
    let expected = if k >= 0 && e.abs() < 15 {
        format!("{digits}{}.0", "0".repeat(k as usize))
    } else if k < 0 && (k > -7 || e.abs() < 10) {
        if n + k > 0 {
            let (a, b) = digits.split_at((n + k) as usize);
            format!("{a}.{b}")
        } else {
            format!("0.{}{digits}", "0".repeat((-k - n) as usize))
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let sign = if e < 0 { '-' } else { '+' };
        if rest.is_empty() {
            format!("{first}e{sign}{}", e.abs())
        } else {
            format!("{first}.{rest}e{sign}{}", e.abs())
        }
    };
    (expected == s)
        .then_some(())
        .ok_or_else(|| format!("{out}: the rules give {expected}"))
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any text a client sends: the parser never panics; what it accepts round-trips.
    #[test]
    fn client_frames_never_panic(text in tricky_string(80)) {
        checks::client_frame(text.as_bytes());
    }

    /// Well-formed commands with any identifier: parsed to the identifier exactly as sent.
    #[test]
    fn commands_keep_their_identifier(
        command in prop::sample::select(vec!["subscribe", "unsubscribe", "message", "dance", ""]),
        identifier in tricky_string(60),
        extra in any::<bool>(),
    ) {
        let mut frame = serde_json::json!({"command": command, "identifier": identifier});
        if extra {
            frame["data"] = serde_json::json!("{\"action\":\"x\"}");
        }
        let parsed = parse_command(&frame.to_string());
        let want = match command {
            "subscribe" => Ok(Command::Subscribe(identifier.clone())),
            "unsubscribe" => Ok(Command::Unsubscribe(identifier.clone())),
            "message" => Ok(Command::Message(identifier.clone())),
            _ => Err(pgcable::cable::frame::CommandError::UnknownCommand),
        };
        prop_assert_eq!(parsed, want);
    }

    /// Identifiers round-trip byte for byte through subscribe, confirm, reject and broadcast
    /// frames, whatever they contain.
    #[test]
    fn identifiers_round_trip_through_confirm_frames(identifier in tricky_string(100)) {
        checks::identifier_round_trip(&identifier);
    }

    /// Identifiers with hostile parameter values: never a panic, and only canonical uuids pass.
    #[test]
    fn identifier_params_are_checked(
        channel in prop::sample::select(vec!["CampaignChannel", "FightChannel", "UserChannel", "campaignchannel", "X"]),
        key in prop::sample::select(vec!["id", "fight_id", "client_id", "channel"]),
        value in json_value(),
    ) {
        let mut text = String::new();
        write_json(&mut text, &value, Style { spaces: false, escape_all: false, exponent_floats: false });
        let identifier = format!(r#"{{"channel":"{channel}","{key}":{text}}}"#);
        checks::identifier(identifier.as_bytes());
        if let Ok(ch) = parse_identifier(&identifier) {
            // Only a string that is a canonical uuid can have made it.
            let J::Str(s) = &value else { return Err(TestCaseError::fail(format!("{identifier} accepted"))) };
            prop_assert_eq!(s.len(), 36);
            let id = match ch { Channel::Campaign { id, .. } | Channel::User { id } => id, Channel::Fight { fight_id } => fight_id };
            prop_assert_eq!(id.to_string(), s.to_ascii_lowercase());
        }
    }

    /// NOTIFY payloads: garbage and near-misses never panic.
    #[test]
    fn notify_payloads_never_panic(
        text in tricky_string(80),
        kind in prop::sample::select(vec!["b", "t", "d", "r", "z"]),
        value in json_value(),
    ) {
        checks::notify_payload(text.as_bytes());
        let mut v = String::new();
        write_json(&mut v, &value, Style { spaces: true, escape_all: false, exponent_floats: true });
        for payload in [
            format!(r#"{{"k":"{kind}","s":"campaign_x","m":{v}}}"#),
            format!(r#"{{"k":"{kind}","id":{v},"u":{v}}}"#),
            format!(r#"{{"k":"{kind}","t":"characters","c":{v}}}"#),
            format!(r#"{{"k":"r","t":"fights","c":[{v}]}}"#),
        ] {
            checks::notify_payload(payload.as_bytes());
            let _ = event::parse(&payload);
        }
    }

    /// reencode over generated JSON in any layout: valid Rails JSON, equal in value to the input
    /// (floats bit for bit, integers digit for digit, member order kept), idempotent.
    #[test]
    fn reencode_keeps_the_value(value in json_value(), style in style()) {
        let mut text = String::new();
        write_json(&mut text, &value, style);
        let mut out = String::new();
        reencode(&mut out, &text).map_err(|e| TestCaseError::fail(format!("{e} in {text}")))?;
        let back = Reader::parse(&out).map_err(|e| TestCaseError::fail(format!("{e}: {out}")))?;
        prop_assert!(exactly_equal(&value, &back), "{} → {}", text, out);
        checks::reencode_text(text.as_bytes());
    }

    /// reencode over arbitrary text: never panics; agrees with serde_json on what is JSON.
    #[test]
    fn reencode_never_panics(text in tricky_string(80)) {
        checks::reencode_text(text.as_bytes());
    }

    /// Every finite double prints in Ruby's notation and reads back as the same double.
    #[test]
    fn doubles_print_in_ruby_notation_and_round_trip(bits in any::<u64>()) {
        let v = f64::from_bits(bits);
        let mut out = String::new();
        push_f64(&mut out, v);
        if !v.is_finite() {
            prop_assert_eq!(out, "null");
        } else {
            let back: f64 = out.parse().map_err(|e| TestCaseError::fail(format!("{out}: {e}")))?;
            prop_assert_eq!(back.to_bits(), v.to_bits(), "{} printed as {}", v, out);
            check_notation(&out, v).map_err(TestCaseError::fail)?;
        }
    }
}

#[test]
fn notation_checker_knows_the_spec_examples() {
    // The checker itself against payloads.md §0's examples (so a wrong checker cannot pass).
    for (v, text) in [
        (100.0, "100.0"),
        (0.00001, "0.00001"),
        (0.00000025, "0.00000025"),
        (1e15, "1e+15"),
        (1e20, "1e+20"),
        (1.5e-10, "1.5e-10"),
        (13.0, "13.0"),
        (-0.0, "-0.0"),
    ] {
        check_notation(text, v).unwrap_or_else(|e| panic!("{e}"));
        let mut out = String::new();
        push_f64(&mut out, v);
        assert_eq!(out, text);
    }
    assert!(check_notation("1e15", 1e15).is_err());
    assert!(check_notation("1000000000000000.0", 1e15).is_err());
    assert!(check_notation("1.0e-10", 1e-10).is_err());
    assert!(check_notation("100", 100.0).is_err());
}

#[test]
fn reader_and_exact_equality_are_strict() {
    let a = Reader::parse(r#"{"a":[1,-0,1.5,"\u00e9\ud83d\ude00"]}"#).expect("parses");
    let b = Reader::parse(r#"{"a":[1,0,1.5,"é😀"]}"#).expect("parses");
    assert!(exactly_equal(&a, &b));
    let c = Reader::parse(r#"{"a":[1,0,1.25,"é😀"]}"#).expect("parses");
    assert!(!exactly_equal(&a, &c));
    for bad in ["01", "1.", "[1,]", "{\"a\" 1}", "\"\u{1}\"", "tru"] {
        assert!(Reader::parse(bad).is_err(), "{bad}");
    }
}

/// Replays the committed seeds, the regressions found by fuzzing, and whatever a local fuzzing
/// run left in `fuzz/artifacts` (its crashes), through the same checks. (`fuzz/corpus` is not
/// replayed here: tens of thousands of inputs; `cargo fuzz run <target>` replays it.)
#[test]
fn fuzz_inputs_replay_on_stable() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 4] = [
        ("client_frame", checks::client_frame),
        ("identifier", checks::identifier),
        ("notify_payload", checks::notify_payload),
        ("reencode", checks::reencode_text),
    ];
    let mut replayed = 0;
    for (target, check) in targets {
        for dir in ["seeds", "regressions", "artifacts"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(data) = std::fs::read(&path) else {
                    continue;
                };
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(outcome.is_ok(), "{} fails its check", path.display());
                replayed += 1;
            }
        }
    }
    assert!(
        replayed >= 15,
        "only {replayed} fuzz inputs found under fuzz/"
    );
    println!("replayed {replayed} fuzz inputs");
}

#[test]
fn adversarial_sizes_do_not_overflow_the_stack() {
    // Deep nesting everywhere a client or a writer controls the text.
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    assert!(parse_command(&deep).is_err());
    assert!(parse_identifier(&deep).is_err());
    let _ = event::parse(&format!(r#"{{"k":"b","s":"x","m":{deep}}}"#));
    checks::notify_payload(format!(r#"{{"k":"b","s":"x","m":{deep}}}"#).as_bytes());
    let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(200_000), "}".repeat(200_000));
    let mut out = String::new();
    assert!(reencode(&mut out, &deep_obj).is_ok());
    assert_eq!(out, deep_obj);
    // A long identifier round-trips too.
    checks::identifier_round_trip(&"<&>\u{2028}".repeat(20_000));
}
