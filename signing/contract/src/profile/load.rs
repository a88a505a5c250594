//! Reading a profile from disk: the `extends` chain, merging, host paths made absolute, and
//! errors that point at the file, line and column of the field at fault.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::schema::Profile;

/// One problem in a profile, located as precisely as the source allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column of the offending value (or key), when known.
    pub position: Option<(usize, usize)>,
    /// Dotted field path, e.g. `image.slot_size` or `image.userland[0].debian.packages`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "`{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{}: cannot read profile: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", Diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ProfileError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ProfileError::Invalid(d) => d,
            ProfileError::Read { .. } => &[],
        }
    }
}

struct Diagnostics<'a>(&'a [Diagnostic]);

impl fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// One file of the `extends` chain.
#[derive(Debug, Clone)]
pub struct Layer {
    pub path: PathBuf,
    pub text: String,
}

/// A profile merged from its `extends` chain, with what is needed to report errors.
#[derive(Debug, Clone)]
pub struct LoadedProfile {
    pub profile: Profile,
    /// The chain, the named file first and its furthest base last.
    pub layers: Vec<Layer>,
}

/// Fields that hold host paths. Relative paths are relative to the file that sets them, so
/// they are made absolute per layer before the layers are merged. `*` stands for every
/// element of an array.
const PATH_FIELDS: &[&[&str]] = &[
    &["image", "signing_key"],
    &["image", "trusted_keys", "*"],
    &["image", "kernel", "path"],
    &["image", "kernel", "modules"],
    &["image", "userland", "*", "oci", "layout"],
    &["image", "userland", "*", "oci", "archive"],
    &["image", "files", "*", "src"],
    &["image", "container_images", "*", "layout"],
    &["image", "container_images", "*", "archive"],
    &["image", "secrets"],
];

const MAX_EXTENDS_DEPTH: usize = 16;

impl LoadedProfile {
    /// Reads `path` and the profiles it extends, checks each file against the schema, merges
    /// them and validates the result.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let mut layers = Vec::new();
        let mut tables = Vec::new();
        let mut next = Some(path.to_path_buf());
        while let Some(file) = next.take() {
            let text = std::fs::read_to_string(&file).map_err(|source| ProfileError::Read {
                path: file.clone(),
                source,
            })?;
            // Each file alone must fit the schema: unknown keys and wrong types are reported
            // here with the position in that file.
            let layer: Profile = toml::from_str(&text)
                .map_err(|e| ProfileError::Invalid(vec![parse_diagnostic(&file, &text, &e)]))?;
            let mut table: toml::Table = toml::from_str(&text)
                .map_err(|e| ProfileError::Invalid(vec![parse_diagnostic(&file, &text, &e)]))?;
            let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
            absolutize_paths(&mut table, &dir);
            table.remove("extends");
            if let Some(base) = layer.extends {
                let base_path = normalize(&dir.join(&base));
                let cycle = layers
                    .iter()
                    .any(|l: &Layer| same_file(&l.path, &base_path))
                    || same_file(&file, &base_path);
                let diag = |message: String| {
                    let position = locate(&text, &["extends"]);
                    ProfileError::Invalid(vec![Diagnostic {
                        file: file.clone(),
                        position,
                        field: Some("extends".into()),
                        message,
                    }])
                };
                if cycle {
                    return Err(diag(format!(
                        "`{base}` is already in the extends chain (a cycle)"
                    )));
                }
                if layers.len() + 1 >= MAX_EXTENDS_DEPTH {
                    return Err(diag(format!(
                        "more than {MAX_EXTENDS_DEPTH} levels of extends"
                    )));
                }
                if !base_path.is_file() {
                    return Err(diag(format!(
                        "the base profile {} does not exist",
                        base_path.display()
                    )));
                }
                next = Some(base_path);
            }
            layers.push(Layer { path: file, text });
            tables.push(table);
        }
        let mut merged = toml::Table::new();
        for table in tables.into_iter().rev() {
            merge(&mut merged, table);
        }
        let profile: Profile = merged.try_into().map_err(|e: toml::de::Error| {
            ProfileError::Invalid(vec![Diagnostic {
                file: path.to_path_buf(),
                position: None,
                field: None,
                message: format!("the merged profile is invalid: {}", e.message()),
            }])
        })?;
        let loaded = LoadedProfile { profile, layers };
        let problems = super::validate::validate(&loaded.profile);
        if problems.is_empty() {
            Ok(loaded)
        } else {
            Err(ProfileError::Invalid(
                problems
                    .into_iter()
                    .map(|p| loaded.diagnostic(&p.field, p.message))
                    .collect(),
            ))
        }
    }

    /// Parses a profile from text with no `extends` (the profile baked into an image or given
    /// to a node at boot). `origin` names it in errors.
    pub fn from_text(origin: &Path, text: &str) -> Result<Self, ProfileError> {
        let profile: Profile = toml::from_str(text)
            .map_err(|e| ProfileError::Invalid(vec![parse_diagnostic(origin, text, &e)]))?;
        let loaded = LoadedProfile {
            profile,
            layers: vec![Layer {
                path: origin.to_path_buf(),
                text: text.to_owned(),
            }],
        };
        if loaded.profile.extends.is_some() {
            return Err(ProfileError::Invalid(vec![loaded.diagnostic(
                "extends",
                "not allowed here: this profile must stand alone".into(),
            )]));
        }
        Ok(loaded)
    }

    /// The file that defines `field` (dotted, with `[i]` indexes) and its position; the named
    /// file when no layer sets it.
    pub fn diagnostic(&self, field: &str, message: String) -> Diagnostic {
        let segments = field_segments(field);
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        // The nearest layer that sets the field, or failing that its closest parent table.
        for depth in (1..=segs.len()).rev() {
            for layer in &self.layers {
                if let Some(position) = locate(&layer.text, &segs[..depth]) {
                    return Diagnostic {
                        file: layer.path.clone(),
                        position: Some(position),
                        field: Some(field.to_owned()),
                        message,
                    };
                }
            }
        }
        Diagnostic {
            file: self
                .layers
                .first()
                .map(|l| l.path.clone())
                .unwrap_or_default(),
            position: None,
            field: Some(field.to_owned()),
            message,
        }
    }

    /// SHA-256 over the chain's files (name and bytes, the named file first). Independent of
    /// where the files are on disk.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for layer in &self.layers {
            let name = layer
                .path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update((layer.text.len() as u64).to_le_bytes());
            hasher.update(layer.text.as_bytes());
        }
        hasher.finalize().into()
    }

    /// The named file.
    pub fn path(&self) -> &Path {
        self.layers
            .first()
            .map(|l| l.path.as_path())
            .unwrap_or(Path::new(""))
    }
}

/// Removes `.` and `a/..` pairs without touching the filesystem, so paths in messages and in
/// the profile read naturally.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !matches!(
                    out.components().next_back(),
                    None | Some(Component::ParentDir | Component::RootDir)
                ) {
                    out.pop();
                } else if out.as_os_str().is_empty()
                    || matches!(out.components().next_back(), Some(Component::ParentDir))
                {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Deep merge: tables merge key by key, anything else in `upper` replaces `lower`'s value.
fn merge(lower: &mut toml::Table, upper: toml::Table) {
    for (key, value) in upper {
        match (lower.get_mut(&key), value) {
            (Some(toml::Value::Table(l)), toml::Value::Table(u)) => merge(l, u),
            (_, value) => {
                lower.insert(key, value);
            }
        }
    }
}

fn absolutize_paths(table: &mut toml::Table, dir: &Path) {
    fn visit(value: &mut toml::Value, pattern: &[&str], dir: &Path) {
        match pattern.split_first() {
            None => {
                if let toml::Value::String(s) = value {
                    let p = Path::new(s.as_str());
                    if p.is_relative() {
                        *s = normalize(&dir.join(p)).to_string_lossy().into_owned();
                    }
                }
            }
            Some((&"*", rest)) => {
                if let toml::Value::Array(items) = value {
                    for item in items {
                        visit(item, rest, dir);
                    }
                }
            }
            Some((key, rest)) => {
                if let toml::Value::Table(t) = value
                    && let Some(v) = t.get_mut(*key)
                {
                    visit(v, rest, dir);
                }
            }
        }
    }
    let mut root = toml::Value::Table(std::mem::take(table));
    for pattern in PATH_FIELDS {
        visit(&mut root, pattern, dir);
    }
    if let toml::Value::Table(t) = root {
        *table = t;
    }
}

/// `image.userland[1].debian` -> ["image", "userland", "1", "debian"].
fn field_segments(field: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            out.push(rest[..i].to_owned());
            rest = &rest[i..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(end) = stripped.find(']') else { break };
                out.push(stripped[..end].to_owned());
                rest = &stripped[end + 1..];
            }
        } else {
            out.push(rest.to_owned());
        }
    }
    out
}

/// 1-based (line, column) of the value at `segments` in a TOML text, if the text sets it.
pub(crate) fn locate(text: &str, segments: &[&str]) -> Option<(usize, usize)> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut span = None;
    let mut table = Some(doc.get_ref());
    let mut value: Option<&toml::de::DeValue<'_>> = None;
    for seg in segments {
        if let Some(t) = table {
            let (k, v) = t.iter().find(|(k, _)| k.get_ref().as_ref() == *seg)?;
            // Point at the key: for tables and arrays of tables the value span is the
            // whole section.
            span = Some(if v.get_ref().is_table() || v.get_ref().is_array() {
                k.span()
            } else {
                v.span()
            });
            value = Some(v.get_ref());
        } else if let Some(toml::de::DeValue::Array(items)) = value {
            let idx: usize = seg.parse().ok()?;
            let item = items.get(idx)?;
            span = Some(item.span());
            value = Some(item.get_ref());
        } else {
            return None;
        }
        table = value.and_then(|v| v.as_table());
    }
    span.map(|s| line_column(text, s.start))
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// The dotted path of the key or value at `offset` (the deepest one that contains it).
fn field_at(text: &str, offset: usize) -> Option<String> {
    fn contains(span: std::ops::Range<usize>, offset: usize) -> bool {
        span.start <= offset && offset < span.end.max(span.start + 1)
    }
    // Table spans do not always cover their bodies (a `[header]` section), so every branch is
    // searched and the deepest hit wins.
    fn go(
        value: &toml::de::DeValue<'_>,
        offset: usize,
        path: &mut Vec<String>,
        best: &mut Option<Vec<String>>,
    ) {
        match value {
            toml::de::DeValue::Table(t) => {
                for (k, v) in t.iter() {
                    path.push(k.get_ref().to_string());
                    if (contains(k.span(), offset)
                        || (!v.get_ref().is_table() && contains(v.span(), offset)))
                        && best.as_ref().is_none_or(|b| b.len() <= path.len())
                    {
                        *best = Some(path.clone());
                    }
                    go(v.get_ref(), offset, path, best);
                    path.pop();
                }
            }
            toml::de::DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let Some(last) = path.last().cloned() else {
                        continue;
                    };
                    if let Some(l) = path.last_mut() {
                        l.push_str(&format!("[{i}]"));
                    }
                    if !item.get_ref().is_table() && contains(item.span(), offset) {
                        *best = Some(path.clone());
                    }
                    go(item.get_ref(), offset, path, best);
                    if let Some(l) = path.last_mut() {
                        *l = last;
                    }
                }
            }
            _ => {}
        }
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    let root = toml::de::DeValue::Table(doc.into_inner());
    let mut best = None;
    go(&root, offset, &mut Vec::new(), &mut best);
    best.map(|p| p.join("."))
}

fn parse_diagnostic(file: &Path, text: &str, err: &toml::de::Error) -> Diagnostic {
    let position = err.span().map(|s| line_column(text, s.start));
    let field = err.span().and_then(|s| field_at(text, s.start));
    Diagnostic {
        file: file.to_path_buf(),
        position,
        field,
        message: err.message().trim().to_owned(),
    }
}
