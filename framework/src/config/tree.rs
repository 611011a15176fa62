//! The layered settings tree: every value with the layer it came from, and a
//! serde deserializer over it whose errors name the key, that layer and what
//! is accepted.
//!
//! Layers are merged in order (file, environment, flags): a table merges key
//! by key, anything else replaces what was there. A key's [`Source`] is kept
//! on every value, so an error can say "`shutdown.drain_timeout` (from
//! environment variable TRELLIS_SHUTDOWN__DRAIN_TIMEOUT): ...".

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// Where a value was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A TOML file (`--config`).
    File(Arc<Path>),
    /// An environment variable, by its name.
    Env(String),
    /// `--set` or one of the named flags.
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "file `{}`", path.display()),
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Flag => f.write_str("the command line"),
        }
    }
}

/// One value of the tree and where it was set.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    value: Value,
    /// `None` only for the root and for the empty table a missing section
    /// is read from.
    source: Option<Source>,
    /// The text an environment variable or flag gave, when it also parsed as
    /// another TOML value (`2`, `true`): a setting that wants a string gets
    /// the text as written.
    text: Option<String>,
}

#[derive(Debug, Clone)]
enum Value {
    Table(BTreeMap<String, Node>),
    Array(Vec<Node>),
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
}

impl Node {
    /// An empty table, set nowhere.
    pub(crate) fn empty() -> Node {
        Node { value: Value::Table(BTreeMap::new()), source: None, text: None }
    }

    /// A TOML document's tables and values, all from `source`.
    pub(crate) fn parse_toml(text: &str, source: &Source) -> Result<Node, toml::de::Error> {
        let table: toml::Table = text.parse()?;
        Ok(Node::from_toml(toml::Value::Table(table), source))
    }

    /// A value given as text (an environment variable, a flag): a TOML
    /// value when it parses as one (`5`, `true`, `"quoted"`, `[1, 2]`),
    /// otherwise the text itself.
    pub(crate) fn scalar(raw: &str, source: Source) -> Node {
        let parsed = format!("v = {raw}").parse::<toml::Table>().ok().filter(|t| t.len() == 1);
        match parsed.and_then(|mut table| table.remove("v")) {
            Some(toml::Value::String(s)) => {
                Node { value: Value::String(s), source: Some(source), text: None }
            }
            Some(value) => Node { text: Some(raw.to_owned()), ..Node::from_toml(value, &source) },
            None => Node { value: Value::String(raw.to_owned()), source: Some(source), text: None },
        }
    }

    fn from_toml(value: toml::Value, source: &Source) -> Node {
        let value = match value {
            toml::Value::String(s) => Value::String(s),
            toml::Value::Integer(i) => Value::Integer(i),
            toml::Value::Float(f) => Value::Float(f),
            toml::Value::Boolean(b) => Value::Boolean(b),
            toml::Value::Datetime(d) => Value::String(d.to_string()),
            toml::Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| Node::from_toml(v, source)).collect())
            }
            toml::Value::Table(table) => {
                Value::Table(table.into_iter().map(|(k, v)| (k, Node::from_toml(v, source))).collect())
            }
        };
        Node { value, source: Some(source.clone()), text: None }
    }

    /// Puts `node` at `path` under this table, making the tables on the way
    /// (a value on the way is replaced by a table): `node` wrapped in one
    /// table per key of `path`, laid over this one.
    pub(crate) fn insert(&mut self, path: &[String], node: Node) {
        let nested = path.iter().rev().fold(node, |inner, key| Node {
            source: inner.source.clone(),
            value: Value::Table(BTreeMap::from([(key.clone(), inner)])),
            text: None,
        });
        self.merge(nested);
    }

    /// Lays `other` over this node: tables key by key (a table keeps the
    /// source of the layer that made it), anything else replaced.
    pub(crate) fn merge(&mut self, other: Node) {
        match (&mut self.value, other.value) {
            (Value::Table(mine), Value::Table(theirs)) => {
                for (key, node) in theirs {
                    match mine.entry(key) {
                        btree_map::Entry::Occupied(mut entry) => entry.get_mut().merge(node),
                        btree_map::Entry::Vacant(entry) => {
                            entry.insert(node);
                        }
                    }
                }
            }
            (_, value) => *self = Node { value, source: other.source, text: other.text },
        }
    }

    /// The entry `key` of this table.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Table(entries) => entries.get(key),
            _ => None,
        }
    }

    /// This table's entries (none for a value).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&String, &Node)> {
        let entries = match &self.value {
            Value::Table(entries) => Some(entries),
            _ => None,
        };
        entries.into_iter().flatten()
    }

    pub(crate) fn is_table(&self) -> bool {
        matches!(self.value, Value::Table(_))
    }

    pub(crate) fn source(&self) -> Option<&Source> {
        self.source.as_ref()
    }

    /// The sources of every value under this node (an empty table counts as
    /// a value), each once, in the order of the keys.
    pub(crate) fn sources(&self) -> Vec<&Source> {
        let mut out = Vec::new();
        self.collect_sources(&mut out);
        out
    }

    fn collect_sources<'a>(&'a self, out: &mut Vec<&'a Source>) {
        match &self.value {
            Value::Table(entries) if !entries.is_empty() => {
                entries.values().for_each(|node| node.collect_sources(out));
            }
            _ => {
                if let Some(source) = &self.source
                    && !out.contains(&source)
                {
                    out.push(source);
                }
            }
        }
    }

    /// Deserializes this node into `T`.
    pub(crate) fn deserialize<T: de::DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(Deserializer(self)).map_err(|err| err.set_nowhere(self))
    }
}

/// A setting that could not be read: the key, where it was set, and what is
/// wrong with it.
#[derive(Debug)]
pub(crate) struct Error {
    /// Keys from the top (`["shutdown", "drain_timeout"]`).
    path: Vec<String>,
    source: Option<Source>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    UnknownVariant(String, &'static [&'static str]),
    UnknownField(String, &'static [&'static str]),
    InvalidType(String, String),
    Message(String),
}

impl From<Kind> for Error {
    fn from(kind: Kind) -> Self {
        Error { path: Vec::new(), source: None, kind }
    }
}

impl Error {
    /// The error with `key` in front of its path.
    pub(crate) fn under(mut self, key: &str) -> Self {
        self.path.insert(0, key.to_owned());
        self
    }

    /// Names `node`'s source when no value below it did.
    fn set_nowhere(mut self, node: &Node) -> Self {
        if self.source.is_none() {
            self.source.clone_from(&node.source);
        }
        self
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Kind::Message(msg.to_string()).into()
    }

    fn invalid_type(unexpected: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Kind::InvalidType(unexpected.to_string(), expected.to_string()).into()
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Kind::UnknownVariant(variant.to_owned(), expected).into()
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Kind::UnknownField(field.to_owned(), expected).into()
    }
}

impl std::error::Error for Error {}

/// "`key` (from SOURCE): what is wrong; what is accepted".
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Service names contain dots: `clients."a.v1.A".balance`, as in TOML.
        let key: Vec<String> =
            self.path.iter().map(|k| if k.contains('.') { format!("\"{k}\"") } else { k.clone() }).collect();
        if key.is_empty() {
            f.write_str("configuration")?;
        } else {
            write!(f, "`{}`", key.join("."))?;
        }
        if let Some(source) = &self.source {
            write!(f, " (from {source})")?;
        }
        let one_of =
            |options: &[&str]| options.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ");
        match &self.kind {
            Kind::UnknownVariant(found, expected) => {
                write!(f, ": `{found}` is not accepted; expected one of {}", one_of(expected))
            }
            Kind::UnknownField(found, []) => {
                write!(f, ": unknown field `{found}`; this section takes no settings")
            }
            Kind::UnknownField(found, expected) => match super::nearest(found, expected) {
                Some(near) => write!(f, ": unknown field `{found}`; did you mean `{near}`?"),
                None => write!(f, ": unknown field `{found}`; expected one of {}", one_of(expected)),
            },
            Kind::InvalidType(actual, expected) => write!(f, ": found {actual}, expected {expected}"),
            Kind::Message(message) => write!(f, ": {message}"),
        }
    }
}

/// Reads one node; errors below it take its key and its source.
struct Deserializer<'a>(&'a Node);

impl Deserializer<'_> {
    fn located<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        result.map_err(|err| err.set_nowhere(self.0))
    }
}

impl<'de> de::Deserializer<'de> for Deserializer<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match &self.0.value {
            Value::String(s) => visitor.visit_str(s),
            Value::Integer(i) => visitor.visit_i64(*i),
            Value::Float(x) => visitor.visit_f64(*x),
            Value::Boolean(b) => visitor.visit_bool(*b),
            Value::Array(items) => visitor.visit_seq(Seq { items: items.iter().enumerate() }),
            Value::Table(entries) => visitor.visit_map(Map { entries: entries.iter(), value: None }),
        };
        self.located(result)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.0.text {
            Some(text) => self.located(visitor.visit_str(text)),
            None => self.deserialize_any(visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let result = match &self.0.value {
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            _ => return self.deserialize_any(visitor),
        };
        self.located(result)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// A table's entries; an error in one names its key.
struct Map<'a> {
    entries: btree_map::Iter<'a, String, Node>,
    value: Option<(&'a String, &'a Node)>,
}

impl<'de> de::MapAccess<'de> for Map<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some((key, node)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some((key, node));
        // An unknown field is refused here, at its own key and source.
        let key_de: de::value::StrDeserializer<'_, Error> = key.as_str().into_deserializer();
        seed.deserialize(key_de).map(Some).map_err(|err| err.set_nowhere(node).under(key))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let (key, node) = self
            .value
            .take()
            .ok_or_else(|| Error::from(Kind::Message("a value without its key".to_owned())))?;
        seed.deserialize(Deserializer(node)).map_err(|err| err.set_nowhere(node).under(key))
    }
}

/// An array's items; an error in one names its index.
struct Seq<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
}

impl<'de> de::SeqAccess<'de> for Seq<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            Some((index, node)) => seed
                .deserialize(Deserializer(node))
                .map(Some)
                .map_err(|err| err.set_nowhere(node).under(&index.to_string())),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Section {
        name: String,
        count: u32,
        on: bool,
        #[serde(with = "crate::duration")]
        wait: Duration,
        list: Vec<String>,
    }

    fn file(text: &str) -> Node {
        Node::parse_toml(text, &Source::File(Path::new("a.toml").into())).unwrap()
    }

    fn flag(path: &str, raw: &str) -> (Vec<String>, Node) {
        (path.split('.').map(str::to_owned).collect(), Node::scalar(raw, Source::Flag))
    }

    #[test]
    fn later_layers_replace_values_and_merge_tables() {
        let mut root = file("[s]\nname = \"a\"\ncount = 1\nwait = \"1s\"\nlist = [\"x\"]\n");
        let (path, node) = flag("s.count", "7");
        root.insert(&path, node);
        root.insert(
            &["s".to_owned(), "on".to_owned()],
            Node::scalar("true", Source::Env("TRELLIS_S__ON".into())),
        );
        let section: Section = root.get("s").unwrap().deserialize().unwrap();
        let expected = Section {
            name: "a".into(),
            count: 7,
            on: true,
            wait: Duration::from_secs(1),
            list: vec!["x".into()],
        };
        assert_eq!(section, expected);
        let sources: Vec<String> = root.get("s").unwrap().sources().iter().map(ToString::to_string).collect();
        // In the order of the keys: `count`, `list`, `name`, `on`, `wait`.
        assert_eq!(sources, ["the command line", "file `a.toml`", "environment variable TRELLIS_S__ON"]);
    }

    #[test]
    fn text_that_parses_as_a_number_is_still_a_string_where_one_is_wanted() {
        let mut root = Node::empty();
        let (path, node) = flag("s.name", "2");
        root.insert(&path, node);
        let (path, node) = flag("s.list", "[\"a\", \"b\"]");
        root.insert(&path, node);
        let section: Section = root.get("s").unwrap().deserialize().unwrap();
        assert_eq!((section.name.as_str(), section.list), ("2", vec!["a".to_owned(), "b".to_owned()]));
        // Text that is no TOML value is the text itself; a second key is not smuggled in.
        let node = Node::scalar("1\ncount = 2", Source::Flag);
        assert!(matches!(&node.value, Value::String(s) if s == "1\ncount = 2"));
    }

    #[test]
    fn errors_name_the_key_its_source_and_what_is_accepted() {
        let mut root = file("[s]\ncount = \"many\"\n");
        let err = root.get("s").unwrap().deserialize::<Section>().unwrap_err().under("s");
        assert_eq!(err.to_string(), "`s.count` (from file `a.toml`): found string \"many\", expected u32");

        let (path, node) = flag("s.cont", "1");
        root.insert(&path, node);
        let err = root.get("s").unwrap().deserialize::<Section>().unwrap_err().under("s");
        assert_eq!(
            err.to_string(),
            "`s.cont` (from the command line): unknown field `cont`; did you mean `count`?"
        );

        let root = file("[s]\nwait = \"soon\"\nlist = [\"a\", 3]\n");
        let err = root.get("s").unwrap().deserialize::<Section>().unwrap_err().under("s");
        assert!(err.to_string().starts_with("`s.list.1` (from file `a.toml`): found integer `3`"), "{err}");
    }

    #[test]
    fn an_error_raised_after_a_value_was_read_names_that_value_s_source() {
        // `wait`'s codec reads a string, then refuses it: the error comes
        // after the value was read, and must still name the flag, not the
        // file that made the table.
        let mut root = file("[s]\nname = \"a\"\nwait = \"1s\"\n");
        let (path, node) = flag("s.wait", "soon");
        root.insert(&path, node);
        let err = root.get("s").unwrap().deserialize::<Section>().unwrap_err().under("s");
        assert!(
            err.to_string().starts_with("`s.wait` (from the command line): `soon` is not a duration"),
            "{err}"
        );
    }

    #[test]
    fn a_value_where_a_table_is_wanted_is_a_type_error() {
        let mut root = Node::empty();
        let (path, node) = flag("s", "x");
        root.insert(&path, node);
        let err = root.get("s").unwrap().deserialize::<Section>().unwrap_err().under("s");
        assert_eq!(
            err.to_string(),
            "`s` (from the command line): found string \"x\", expected struct Section"
        );
        // A flag below it turns the value into a table again.
        let (path, node) = flag("s.count", "3");
        root.insert(&path, node);
        assert_eq!(root.get("s").unwrap().deserialize::<Section>().unwrap().count, 3);
    }
}
