//! Structural check of a site file: every unknown key, missing key and value of the
//! wrong type, in every site, with its line and column.
//!
//! `serde_path_to_error` names the key path of the first problem in a `[[site]]` table,
//! and the TOML parser's spans give its place in the file. To find the next problem,
//! the check removes the offending key or array element from its copy of the table (for
//! a missing key it adds a placeholder value instead) and deserializes the table again,
//! until it deserializes. A site with a structural problem gets no semantic checks,
//! because its copy of the table no longer contains what the file says.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::SiteProblem;
use super::import::RawSite;

/// Values tried in place of a missing key, so that the rest of its table is checked.
/// Every required key of a site takes one of these types.
const PLACEHOLDERS: [&str; 4] = ["\"\"", "0", "[]", "false"];

/// Minimum Jaro-Winkler similarity for a "did you mean" suggestion. At 0.8, a key with
/// transposed or missing letters (`nmae`, `max_sesions`) matches the intended key.
const SUGGESTION_SIMILARITY: f64 = 0.8;

/// A problem in a site file, with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// Key path such as `site[2].limits.cpus`.
    pub field: String,
    /// The site's `name`, when the file gives one as a string.
    pub site: Option<String>,
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.field
        )?;
        if let Some(name) = &self.site {
            write!(f, " (site {name:?})")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Key(String),
    Index(usize),
}

fn render(path: &[Segment]) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) if text.is_empty() => text.push_str(key),
            Segment::Key(key) => {
                text.push('.');
                text.push_str(key);
            }
            Segment::Index(index) => text.push_str(&format!("[{index}]")),
        }
    }
    text
}

/// Parses a field such as `site[0].login.steps[1].selector` into its segments.
fn parse_field(field: &str) -> Vec<Segment> {
    let mut path = Vec::new();
    for part in field.split('.') {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next() {
            path.push(Segment::Key(key.to_owned()));
        }
        for index in pieces {
            if let Ok(index) = index.trim_end_matches(']').parse() {
                path.push(Segment::Index(index));
            }
        }
    }
    path
}

/// A parsed site file, with the span of every key and value.
pub struct SiteFile<'t> {
    text: &'t str,
    root: Spanned<DeTable<'t>>,
}

/// The outcome of one `[[site]]` table: its raw values, or its structural problems.
pub type SiteOutcome = Result<RawSite, Vec<FileProblem>>;

impl<'t> SiteFile<'t> {
    /// Parses the TOML syntax. A syntax error stops the parse, so it is reported alone.
    pub fn parse(text: &'t str) -> Result<SiteFile<'t>, toml::de::Error> {
        Ok(SiteFile {
            text,
            root: DeTable::parse(text)?,
        })
    }

    /// Checks the structure of the whole file: the problems outside any site, and the
    /// outcome of each `[[site]]` table in file order.
    pub fn read_sites(&self) -> (Vec<FileProblem>, Vec<SiteOutcome>) {
        let mut problems = Vec::new();
        for key in self.root.get_ref().keys() {
            if key.get_ref() != "site" {
                problems.push(self.problem(
                    &[Segment::Key(key.get_ref().to_string())],
                    None,
                    key.span(),
                    unknown_message("key", key.get_ref(), &["site"]),
                ));
            }
        }

        let Some(list) = self.root.get_ref().get("site") else {
            return (problems, Vec::new());
        };
        let DeValue::Array(entries) = list.get_ref() else {
            problems.push(self.problem(
                &[Segment::Key("site".to_owned())],
                None,
                list.span(),
                format!(
                    "expected an array of tables written as [[site]], found {}",
                    list.get_ref().type_str()
                ),
            ));
            return (problems, Vec::new());
        };

        let outcomes = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| self.check_site(index, entry))
            .collect();
        (problems, outcomes)
    }

    /// Returns the `name` of each `[[site]]` table, when it is a string.
    pub fn site_names(&self) -> Vec<Option<String>> {
        let Some(DeValue::Array(entries)) =
            self.root.get_ref().get("site").map(|list| list.get_ref())
        else {
            return Vec::new();
        };
        entries.iter().map(site_name).collect()
    }

    /// Places a semantic problem, such as one on `site[1].start_url`, at its value in the
    /// file, or at the closest enclosing table when the key is absent.
    pub fn locate(&self, problem: SiteProblem) -> FileProblem {
        let path = parse_field(&problem.field);
        let mut span = self.root.span();
        let mut node: Option<&Spanned<DeValue<'t>>> = None;
        let mut site = None;
        for (depth, segment) in path.iter().enumerate() {
            let next = match (segment, node.map(Spanned::get_ref)) {
                (Segment::Key(key), None) => self.root.get_ref().get(key.as_str()),
                (Segment::Key(key), Some(DeValue::Table(table))) => table.get(key.as_str()),
                (Segment::Index(index), Some(DeValue::Array(items))) => items.get(*index),
                _ => None,
            };
            let Some(next) = next else { break };
            if depth == 1 {
                site = site_name(next);
            }
            span = next.span();
            node = Some(next);
        }
        let (line, column) = self.line_column(span.start);
        FileProblem {
            field: problem.field,
            site,
            line,
            column,
            message: problem.message,
        }
    }

    fn check_site(&self, index: usize, entry: &Spanned<DeValue<'t>>) -> SiteOutcome {
        let prefix = [Segment::Key("site".to_owned()), Segment::Index(index)];
        let name = site_name(entry);
        let DeValue::Table(table) = entry.get_ref() else {
            let message = format!(
                "expected a [[site]] table, found {}",
                entry.get_ref().type_str()
            );
            return Err(vec![self.problem(&prefix, name, entry.span(), message)]);
        };

        let mut check = SiteCheck {
            table: Spanned::new(entry.span(), table.clone()),
            removed: BTreeMap::new(),
            placeholders: BTreeMap::new(),
            reported: BTreeSet::new(),
            problems: Vec::new(),
        };
        loop {
            let deserializer = toml::de::Deserializer::from(check.table.clone());
            let error = match serde_path_to_error::deserialize::<_, RawSite>(deserializer) {
                Ok(raw) if check.problems.is_empty() => return Ok(raw),
                Ok(_) => break,
                Err(error) => error,
            };
            let path: Vec<Segment> = error
                .path()
                .iter()
                .filter_map(|segment| match segment {
                    serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                    _ => None,
                })
                .collect();
            let error = error.into_inner();
            let span = error.span().unwrap_or_else(|| entry.span());
            match check.next_step(path, error.message()) {
                Step::Record { path, message } => {
                    let full: Vec<Segment> = prefix.iter().cloned().chain(path).collect();
                    check
                        .problems
                        .push(self.problem(&full, name.clone(), span, message));
                }
                Step::Retry => {}
                Step::Stop { path, message } => {
                    if let Some(message) = message {
                        let full: Vec<Segment> = prefix.iter().cloned().chain(path).collect();
                        check
                            .problems
                            .push(self.problem(&full, name.clone(), span, message));
                    }
                    break;
                }
            }
        }
        check
            .problems
            .sort_by_key(|problem| (problem.line, problem.column));
        Err(check.problems)
    }

    fn problem(
        &self,
        path: &[Segment],
        site: Option<String>,
        span: Range<usize>,
        message: String,
    ) -> FileProblem {
        let (line, column) = self.line_column(span.start);
        FileProblem {
            field: render(path),
            site,
            line,
            column,
            message,
        }
    }

    fn line_column(&self, offset: usize) -> (usize, usize) {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .unwrap_or_default()
            .chars()
            .count()
            + 1;
        (line, column)
    }
}

fn site_name(entry: &Spanned<DeValue<'_>>) -> Option<String> {
    let DeValue::Table(table) = entry.get_ref() else {
        return None;
    };
    table
        .get("name")
        .and_then(|name| name.get_ref().as_str())
        .map(str::to_owned)
}

/// Next action of the check after one deserialization error.
enum Step {
    /// Report the problem at `path` (in the file's indices) and deserialize again.
    Record { path: Vec<Segment>, message: String },
    /// Deserialize again without a report: a placeholder had the wrong type.
    Retry,
    /// Stop checking this site, reporting the problem when there is one.
    Stop {
        path: Vec<Segment>,
        message: Option<String>,
    },
}

/// One site's copy of its table, changed as problems are found.
struct SiteCheck<'t> {
    table: Spanned<DeTable<'t>>,
    /// Array elements removed so far: the array's path in the file's indices, and the
    /// removed indices in ascending order.
    removed: BTreeMap<Vec<Segment>, Vec<usize>>,
    /// Missing keys and the number of placeholders tried for each.
    placeholders: BTreeMap<Vec<Segment>, usize>,
    /// Keys already reported, so removing one does not report it again as missing.
    reported: BTreeSet<Vec<Segment>>,
    problems: Vec<FileProblem>,
}

impl<'t> SiteCheck<'t> {
    /// Records the error at `path` (in the table's current indices) and changes the
    /// table so that the next deserialization gets past it.
    fn next_step(&mut self, path: Vec<Segment>, message: &str) -> Step {
        let in_array = path
            .iter()
            .any(|segment| matches!(segment, Segment::Index(_)));

        if let (Some(key), false) = (quoted_after(message, "missing field "), in_array) {
            let mut missing = path;
            missing.push(Segment::Key(key.to_owned()));
            return self.fill_missing(missing);
        }
        if !in_array && let Some(tried) = self.placeholders.get(&path).copied() {
            return self.fill_placeholder(path, tried);
        }

        let mut original = self.original(&path);
        let reported = original.clone();
        if let Some(key) = quoted_after(message, "missing field ") {
            original.push(Segment::Key(key.to_owned()));
        }
        let message = describe(message);
        // An error inside an array element drops the whole element, such as a login
        // step with an unknown action.
        let target_length = path
            .iter()
            .rposition(|segment| matches!(segment, Segment::Index(_)))
            .map_or(path.len(), |position| position + 1);
        if target_length == 0 || !self.remove(&path[..target_length]) {
            return Step::Stop {
                path: original,
                message: Some(message),
            };
        }
        self.reported.insert(reported);
        Step::Record {
            path: original,
            message,
        }
    }

    fn fill_missing(&mut self, missing: Vec<Segment>) -> Step {
        if self.reported.insert(missing.clone()) {
            self.placeholders.insert(missing.clone(), 0);
            let key = match missing.last() {
                Some(Segment::Key(key)) => key.clone(),
                _ => String::new(),
            };
            let message = missing_message(&key);
            if !self.insert(&missing, 0) {
                return Step::Stop {
                    path: missing,
                    message: Some(message),
                };
            }
            return Step::Record {
                path: missing,
                message,
            };
        }
        // A key removed for its type: it is reported once, as a wrong type.
        self.placeholders.insert(missing.clone(), 0);
        if self.insert(&missing, 0) {
            Step::Retry
        } else {
            Step::Stop {
                path: missing,
                message: None,
            }
        }
    }

    fn fill_placeholder(&mut self, path: Vec<Segment>, tried: usize) -> Step {
        let next = tried + 1;
        self.placeholders.insert(path.clone(), next);
        if next < PLACEHOLDERS.len() && self.insert(&path, next) {
            Step::Retry
        } else {
            Step::Stop {
                path,
                message: None,
            }
        }
    }

    /// Translates a path in the table's current indices to the file's indices.
    fn original(&self, path: &[Segment]) -> Vec<Segment> {
        let mut original = Vec::new();
        for segment in path {
            let segment = match segment {
                Segment::Key(key) => Segment::Key(key.clone()),
                Segment::Index(index) => {
                    let mut index = *index;
                    for removed in self.removed.get(&original).into_iter().flatten() {
                        if *removed <= index {
                            index += 1;
                        }
                    }
                    Segment::Index(index)
                }
            };
            original.push(segment);
        }
        original
    }

    /// Removes the key or array element at `path`; returns whether it was there.
    fn remove(&mut self, path: &[Segment]) -> bool {
        let Some((last, parent)) = path.split_last() else {
            return false;
        };
        let original_parent = self.original(parent);
        let original_last = self.original(path).pop();
        let Some(container) = walk(self.table.get_mut(), parent) else {
            return false;
        };
        match (last, container) {
            (Segment::Key(key), Container::Table(table)) => table.remove(key.as_str()).is_some(),
            (Segment::Index(index), Container::Array(items)) if *index < items.len() => {
                // `DeArray` has no `remove`, so the array is rebuilt without the element.
                let items_before = std::mem::replace(items, DeArray::new());
                *items = items_before
                    .into_iter()
                    .enumerate()
                    .filter(|(position, _)| position != index)
                    .map(|(_, item)| item)
                    .collect();
                if let Some(Segment::Index(original)) = original_last {
                    let removed = self.removed.entry(original_parent).or_default();
                    let position = removed.partition_point(|item| *item < original);
                    removed.insert(position, original);
                }
                true
            }
            _ => false,
        }
    }

    /// Puts placeholder number `choice` at the key `path`; returns whether its table exists.
    fn insert(&mut self, path: &[Segment], choice: usize) -> bool {
        let Some((Segment::Key(key), parent)) = path.split_last() else {
            return false;
        };
        let Some(Container::Table(table)) = walk(self.table.get_mut(), parent) else {
            return false;
        };
        let Ok(value) = DeValue::parse(PLACEHOLDERS[choice]) else {
            return false;
        };
        let span = value.span();
        table.insert(Spanned::new(span, key.clone().into()), value);
        true
    }
}

enum Container<'a, 't> {
    Table(&'a mut DeTable<'t>),
    Array(&'a mut DeArray<'t>),
}

fn walk<'a, 't>(table: &'a mut DeTable<'t>, path: &[Segment]) -> Option<Container<'a, 't>> {
    let mut container = Container::Table(table);
    for segment in path {
        let value = match (segment, container) {
            (Segment::Key(key), Container::Table(table)) => table.get_mut(key.as_str())?,
            (Segment::Index(index), Container::Array(items)) => items.get_mut(*index)?,
            _ => return None,
        };
        container = match value.get_mut() {
            DeValue::Table(table) => Container::Table(table),
            DeValue::Array(items) => Container::Array(items),
            _ => return None,
        };
    }
    Some(container)
}

/// Returns the text between the backticks that follow `prefix` in `message`.
fn quoted_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split('`').next()
}

/// Rewords serde's "missing field" message, and its "unknown field" and "unknown
/// variant" messages to name the valid keys or values and the closest one. Other
/// messages already state what is expected.
fn describe(message: &str) -> String {
    let message = message.lines().next().unwrap_or_default();
    if let Some(key) = quoted_after(message, "missing field ") {
        return missing_message(key);
    }
    for (prefix, noun) in [("unknown field ", "key"), ("unknown variant ", "value")] {
        if let Some(found) = quoted_after(message, prefix) {
            let expected = message
                .split_once(", expected ")
                .map(|(_, list)| list.split('`').skip(1).step_by(2).collect::<Vec<_>>())
                .unwrap_or_default();
            return unknown_message(noun, found, &expected);
        }
    }
    message.to_owned()
}

fn missing_message(key: &str) -> String {
    format!("missing key `{key}`; add it, because it has no default")
}

fn unknown_message(noun: &str, found: &str, valid: &[&str]) -> String {
    let mut message = format!("unknown {noun} `{found}`");
    if valid.is_empty() {
        return message;
    }
    message.push_str(&format!("; valid {noun}s here: {}", valid.join(", ")));
    let closest = valid
        .iter()
        .map(|candidate| (strsim::jaro_winkler(found, candidate), candidate))
        .filter(|(similarity, _)| *similarity >= SUGGESTION_SIMILARITY)
        .max_by(|left, right| left.0.total_cmp(&right.0));
    if let Some((_, candidate)) = closest {
        message.push_str(&format!("; did you mean `{candidate}`?"));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestion_needs_a_close_key() {
        let valid = ["name", "display_name", "start_url"];

        assert!(unknown_message("key", "nmae", &valid).ends_with("did you mean `name`?"));
        assert!(!unknown_message("key", "privileged", &valid).contains("did you mean"));
    }

    #[test]
    fn field_parses_into_segments() {
        let path = parse_field("site[1].login.steps[2].selector");

        assert_eq!(render(&path), "site[1].login.steps[2].selector");
        assert_eq!(path[1], Segment::Index(1));
        assert_eq!(path[4], Segment::Index(2));
    }
}
