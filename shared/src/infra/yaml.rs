//! A small block-style YAML emitter for templates, deterministic by construction.
//!
//! Scalars are plain only when no YAML 1.1 or 1.2 reader can take them for anything but a
//! string (`AWS::SQS::Queue`, `arn:aws:...`); everything else is double-quoted with JSON-style
//! escapes, which YAML reads the same way. Characters that YAML 1.1 readers treat as line
//! breaks (U+0085, U+2028, U+2029) or that are not printable are escaped, so no reader folds
//! or rejects a value.

use std::fmt::Write as _;

use super::Node;

/// The YAML text of `node` (a mapping or sequence at the top), ending with a newline.
pub fn to_yaml(node: &Node) -> String {
    let mut out = String::new();
    match node {
        Node::Map(entries) if !entries.is_empty() => write_map(&mut out, entries, 0),
        Node::Seq(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

/// An empty collection or a scalar, written on one line.
fn inline(node: &Node) -> String {
    match node {
        Node::Str(s) => scalar(s),
        Node::Int(i) => i.to_string(),
        Node::Bool(b) => b.to_string(),
        Node::Seq(_) => "[]".to_owned(),
        Node::Map(_) => "{}".to_owned(),
    }
}

fn is_block(node: &Node) -> bool {
    match node {
        Node::Map(entries) => !entries.is_empty(),
        Node::Seq(items) => !items.is_empty(),
        _ => false,
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// A mapping whose first key starts at the current position (already padded to `indent`
/// for the first line), the others padded to `indent`.
fn write_map(out: &mut String, entries: &[(String, Node)], indent: usize) {
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            pad(out, indent);
        }
        out.push_str(&scalar(key));
        out.push(':');
        if is_block(value) {
            out.push('\n');
            pad(out, indent + 2);
            match value {
                Node::Map(inner) => write_map(out, inner, indent + 2),
                Node::Seq(items) => write_seq(out, items, indent + 2),
                _ => unreachable!("is_block covers only collections"),
            }
        } else {
            out.push(' ');
            out.push_str(&inline(value));
            out.push('\n');
        }
    }
}

/// A sequence whose first `- ` starts at the current position, the others padded to `indent`.
fn write_seq(out: &mut String, items: &[Node], indent: usize) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            pad(out, indent);
        }
        out.push_str("- ");
        match item {
            // Compact forms: `- key: value` and `- - item`, continued two columns in.
            Node::Map(inner) if !inner.is_empty() => write_map(out, inner, indent + 2),
            Node::Seq(inner) if !inner.is_empty() => write_seq(out, inner, indent + 2),
            scalar_or_empty => {
                out.push_str(&inline(scalar_or_empty));
                out.push('\n');
            }
        }
    }
}

/// Words some YAML reader takes for a boolean or null when unquoted (YAML 1.1 included).
const RESERVED: [&str; 11] = ["y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf"];

/// Whether `s` reads back as the same string when written plain. Conservative: a letter
/// first (no number, date, indicator or tag), then only letters, digits and `_ . / : -`,
/// not ending in `:` (a key indicator), and no reserved word.
fn plain_is_safe(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else { return false };
    first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | ':' | '-'))
        && !s.ends_with(':')
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str())
}

/// A string scalar: plain when safe, else double-quoted with escapes.
pub fn scalar(s: &str) -> String {
    if plain_is_safe(s) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                // Only BMP characters land here (see `needs_escape`), so one \u escape does.
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Characters outside YAML's printable set, or that YAML 1.1 reads as line breaks or a BOM.
fn needs_escape(c: char) -> bool {
    let n = u32::from(c);
    n < 0x20 || (0x7F..=0x9F).contains(&n) || matches!(n, 0x2028 | 0x2029 | 0xFEFF | 0xFFFE | 0xFFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Node {
        Node::Str(v.to_owned())
    }

    #[test]
    fn quotes_everything_a_reader_could_mistake() {
        for word in ["yes", "No", "ON", "off", "y", "N", "true", "null", "NaN", ""] {
            assert_eq!(scalar(word), format!("\"{word}\""), "{word}");
        }
        for risky in ["1", "1.5", "0x10", "1e3", "2026-01-01", ".inf", "-", "- x", "a: b", "a #b", "#c", "key:"] {
            assert!(scalar(risky).starts_with('"'), "{risky} must be quoted");
        }
        for risky in ["*x", "&a", "!Ref", "%x", "@x", "`x", "|", ">", "'", "<<", "=", "~", "{", "[", "?"] {
            assert!(scalar(risky).starts_with('"'), "{risky} must be quoted");
        }
        for plain in ["AWS::SQS::Queue", "Fn::GetAtt", "arn:aws:sqs", "provided.al2023", "rust-cargolambda", "x"] {
            assert_eq!(scalar(plain), plain);
        }
    }

    #[test]
    fn escapes_like_json_and_guards_line_breaks() {
        assert_eq!(scalar("say \"hi\"\\n"), r#""say \"hi\"\\n""#);
        assert_eq!(scalar("a\nb\tc"), r#""a\nb\tc""#);
        assert_eq!(scalar("héllo ✓ 😀"), "\"héllo ✓ 😀\"");
        assert_eq!(scalar("x\u{2028}y\u{85}z\u{7f}"), r#""x\u2028y\u0085z\u007F""#);
        assert_eq!(scalar("\u{feff}bom"), r#""\uFEFFbom""#);
    }

    #[test]
    fn writes_block_collections_with_compact_sequences() {
        let node = Node::Map(vec![
            ("Name".into(), s("taskbeat-default")),
            ("Size".into(), Node::Int(262_144)),
            ("On".into(), Node::Bool(true)),
            ("Empty".into(), Node::Seq(vec![])),
            ("None".into(), Node::Map(vec![])),
            (
                "Statement".into(),
                Node::Seq(vec![
                    Node::Map(vec![
                        ("Effect".into(), s("Allow")),
                        ("Action".into(), Node::Seq(vec![s("sqs:SendMessage"), s("sqs:GetQueueUrl")])),
                    ]),
                    Node::Seq(vec![s("a"), Node::Seq(vec![s("b")])]),
                    s("last"),
                ]),
            ),
        ]);
        let expected = "\
Name: taskbeat-default
Size: 262144
\"On\": true
Empty: []
None: {}
Statement:
  - Effect: Allow
    Action:
      - sqs:SendMessage
      - sqs:GetQueueUrl
  - - a
    - - b
  - last
";
        assert_eq!(to_yaml(&node), expected);
    }
}
