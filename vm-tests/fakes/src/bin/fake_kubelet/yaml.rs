//! A YAML subset for kubeconfigs as kubeadm, client-go and hand-written templates lay them
//! out: block mappings and sequences (`- key: value` items included), plain and quoted
//! scalars, comments. Flow collections other than `{}` and `[]`, block scalars, anchors and
//! multi-line scalars are refused rather than misread.

use serde_json::{Map, Value};

struct Line {
    indent: usize,
    text: String,
    number: usize,
}

pub fn parse(text: &str) -> Result<Value, String> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let content = raw.trim_start_matches(' ');
        if content.starts_with('\t') {
            return Err(format!("line {}: tab in indentation", i + 1));
        }
        let content = strip_comment(content).trim_end();
        if content.is_empty() || content == "---" {
            continue;
        }
        lines.push(Line {
            indent: raw.len() - raw.trim_start_matches(' ').len(),
            text: content.to_owned(),
            number: i + 1,
        });
    }
    let Some(indent) = lines.first().map(|l| l.indent) else {
        return Err("empty document".into());
    };
    let mut pos = 0;
    let value = block(&mut lines, &mut pos, indent)?;
    match lines.get(pos) {
        Some(l) => Err(format!("line {}: unexpected indentation", l.number)),
        None => Ok(value),
    }
}

/// ` #` starts a comment outside quotes.
fn strip_comment(s: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && (prev == ' ' || i == 0) => return &s[..i],
            _ => {}
        }
        prev = c;
    }
    s
}

fn is_item(s: &str) -> bool {
    s == "-" || s.starts_with("- ")
}

fn block(lines: &mut [Line], pos: &mut usize, indent: usize) -> Result<Value, String> {
    if lines.get(*pos).is_some_and(|l| is_item(&l.text)) {
        sequence(lines, pos, indent)
    } else {
        mapping(lines, pos, indent)
    }
}

fn sequence(lines: &mut [Line], pos: &mut usize, indent: usize) -> Result<Value, String> {
    let mut items = Vec::new();
    while let Some(line) = lines.get(*pos) {
        if line.indent != indent || !is_item(&line.text) {
            break;
        }
        let rest = line.text[1..].trim_start().to_owned();
        if rest.is_empty() {
            *pos += 1;
            match lines.get(*pos) {
                Some(next) if next.indent > indent => {
                    let i = next.indent;
                    items.push(block(lines, pos, i)?);
                }
                _ => items.push(Value::Null),
            }
        } else if is_item(&rest) || split_key(&rest)?.is_some() {
            // `- key: value` opens a mapping whose keys line up with `key`.
            let column = indent + line.text.len() - rest.len();
            lines[*pos].indent = column;
            lines[*pos].text = rest;
            items.push(block(lines, pos, column)?);
        } else {
            let number = line.number;
            items.push(scalar(&rest).map_err(|e| format!("line {number}: {e}"))?);
            *pos += 1;
        }
    }
    Ok(Value::Array(items))
}

fn mapping(lines: &mut [Line], pos: &mut usize, indent: usize) -> Result<Value, String> {
    let mut map = Map::new();
    while let Some(line) = lines.get(*pos) {
        if line.indent != indent || is_item(&line.text) {
            break;
        }
        let number = line.number;
        let (key, rest) = split_key(&line.text)?
            .ok_or_else(|| format!("line {number}: expected `key: value`"))?;
        *pos += 1;
        let value = if !rest.is_empty() {
            scalar(&rest).map_err(|e| format!("line {number}: {e}"))?
        } else {
            match lines.get(*pos) {
                // A nested block, or a sequence at the key's own indentation.
                Some(next)
                    if next.indent > indent || (next.indent == indent && is_item(&next.text)) =>
                {
                    let i = next.indent;
                    block(lines, pos, i)?
                }
                _ => Value::Null,
            }
        };
        if map.insert(key.clone(), value).is_some() {
            return Err(format!("line {number}: duplicate key {key:?}"));
        }
    }
    Ok(Value::Object(map))
}

/// `key: rest` or `key:`; `None` when the text is not a mapping entry.
fn split_key(s: &str) -> Result<Option<(String, String)>, String> {
    if s.starts_with(['"', '\'']) {
        let quote = s.as_bytes()[0] as char;
        let Some(end) = s[1..].find(quote) else {
            return Ok(None);
        };
        let after = &s[end + 2..];
        return Ok(match after.strip_prefix(':') {
            Some(rest) if rest.is_empty() || rest.starts_with(' ') => {
                Some((s[1..end + 1].to_owned(), rest.trim().to_owned()))
            }
            _ => None,
        });
    }
    let at = match (s.find(": "), s.strip_suffix(':')) {
        (Some(i), _) => i,
        (None, Some(k)) => k.len(),
        _ => return Ok(None),
    };
    let key = &s[..at];
    if key.is_empty() || key.starts_with(['{', '[', '&', '*', '!', '?']) {
        return Err(format!("unsupported YAML key {key:?}"));
    }
    Ok(Some((key.to_owned(), s[at + 1..].trim().to_owned())))
}

fn scalar(s: &str) -> Result<Value, String> {
    if let Some(inner) = s.strip_prefix('"') {
        let inner = inner.strip_suffix('"').ok_or("unterminated double quote")?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c @ ('"' | '\\' | '/')) => out.push(c),
                other => return Err(format!("unsupported escape \\{other:?}")),
            }
        }
        return Ok(Value::String(out));
    }
    if let Some(inner) = s.strip_prefix('\'') {
        let inner = inner
            .strip_suffix('\'')
            .ok_or("unterminated single quote")?;
        return Ok(Value::String(inner.replace("''", "'")));
    }
    Ok(match s {
        "{}" => Value::Object(Map::new()),
        "[]" => Value::Array(Vec::new()),
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" | "~" => Value::Null,
        _ if s.starts_with(['{', '[', '|', '>', '&', '*', '!']) => {
            return Err(format!("unsupported YAML value {s:?}"));
        }
        _ => match s.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(s.to_owned()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadm_style_kubeconfig() {
        let text = r#"apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: QUJD
    server: https://10.0.0.5:6443   # the endpoint
  name: keel
contexts:
- context:
    cluster: keel
    user: "system:node:cp-1"
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: 'system:node:cp-1'
  user:
    client-certificate-data: REVG
    token: "a#b"
"#;
        let v = parse(text).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://10.0.0.5:6443"
        );
        assert_eq!(v["clusters"][0]["name"], "keel");
        assert_eq!(v["contexts"][0]["context"]["user"], "system:node:cp-1");
        assert_eq!(v["users"][0]["name"], "system:node:cp-1");
        assert_eq!(v["users"][0]["user"]["token"], "a#b");
        assert_eq!(v["preferences"], serde_json::json!({}));
        assert_eq!(v["current-context"], "default");
    }

    #[test]
    fn sequences_at_the_key_indent_and_nested() {
        let v = parse("a:\n- x\n- y: 1\n  z: 2\n-\n  - 3\nb: true\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": ["x", {"y": 1, "z": 2}, [3]], "b": true})
        );
    }

    #[test]
    fn refused() {
        assert!(parse("a: |\n  text\n").is_err());
        assert!(parse("a: {b: c}\n").is_err());
        assert!(parse("a: 1\na: 2\n").is_err());
        assert!(parse("a: 1\n  b: 2\n").is_err());
        assert!(parse("just text\n").is_err());
        assert!(parse("").is_err());
    }
}
