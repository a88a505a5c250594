//! Debian's control-file format (deb822): paragraphs of `Field: value` lines, as
//! `apt-cache show`, dpkg's status file and a package's `control` file write them. Shared by
//! the `.deb` reader ([`super::deb`]) and the apt driver ([`super::debian`]).

/// One paragraph of a Debian control file: fields in order, each value with its continuation
/// lines (`"first\n second"`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stanza {
    pub fields: Vec<(String, String)>,
}

impl Stanza {
    /// The value of `name` (case-insensitive, as field names are).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The paragraph as deb822 text again.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.fields {
            out.push_str(k);
            out.push(':');
            if !v.is_empty() && !v.starts_with('\n') {
                out.push(' ');
            }
            out.push_str(v);
            out.push('\n');
        }
        out
    }
}

/// Parses deb822 paragraphs (`apt-cache show`, a dpkg status file, a `control` file).
pub fn parse_stanzas(text: &str) -> Vec<Stanza> {
    let mut out = Vec::new();
    let mut current = Stanza::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.fields.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.fields.last_mut() {
                v.push('\n');
                v.push_str(line);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            current.fields.push((k.to_string(), v.trim().to_string()));
        }
    }
    if !current.fields.is_empty() {
        out.push(current);
    }
    out
}
