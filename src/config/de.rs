//! Typed reading of the node tree: a serde `Deserializer` over a
//! [`Node`], less the values at a set of spans.
//!
//! It reads exactly as `serde_json::from_value` reads the node's JSON form
//! ([`Node::to_json`], [`Node::to_json_pruned`]): the same visitor calls for
//! the same values (a non-negative integer as `u64`, a float that is not
//! finite as null, a mapping's keys as strings) and the same errors, which
//! are `serde_json::Error`s, so that a message is the same either way (a
//! test holds the two to it). It builds no intermediate value.

use std::collections::HashSet;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, Unexpected, Visitor};
use serde_json::Error;

use super::yaml::{Key, Node, Value};

/// `node`, less the values (and the entries of the keys) at `skip`, as a `T`.
pub(crate) fn from_node<'a, T: serde::Deserialize<'a>>(
    node: &'a Node,
    skip: &'a HashSet<Range<usize>>,
) -> Result<T, Error> {
    T::deserialize(NodeDe { node, skip })
}

#[derive(Clone, Copy)]
struct NodeDe<'a> {
    node: &'a Node,
    skip: &'a HashSet<Range<usize>>,
}

impl<'a> NodeDe<'a> {
    fn kept_items(self) -> impl ExactSizeIterator<Item = &'a Node> {
        let skip = self.skip;
        let items = match &self.node.value {
            Value::Seq(items) => items.as_slice(),
            _ => &[],
        };
        let kept: Vec<&'a Node> = if skip.is_empty() {
            items.iter().collect()
        } else {
            items.iter().filter(|n| !skip.contains(&n.span)).collect()
        };
        kept.into_iter()
    }

    fn kept_entries(self) -> impl ExactSizeIterator<Item = &'a (Key, Node)> {
        let skip = self.skip;
        let entries = match &self.node.value {
            Value::Map(entries) => entries.as_slice(),
            _ => &[],
        };
        let kept: Vec<&'a (Key, Node)> = if skip.is_empty() {
            entries.iter().collect()
        } else {
            entries
                .iter()
                .filter(|(k, v)| !skip.contains(&k.span) && !skip.contains(&v.span))
                .collect()
        };
        kept.into_iter()
    }

    /// What serde calls the value in an error, as for its JSON form.
    fn unexpected(self) -> Unexpected<'a> {
        match &self.node.value {
            Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Int(i) if *i >= 0 => Unexpected::Unsigned(*i as u64),
            Value::Int(i) => Unexpected::Signed(*i),
            Value::Float(f) if f.is_finite() => Unexpected::Float(*f),
            Value::Float(_) => Unexpected::Unit,
            Value::Str(s) => Unexpected::Str(s),
            Value::Seq(_) => Unexpected::Seq,
            Value::Map(_) => Unexpected::Map,
        }
    }

    fn invalid_type<V: Visitor<'a>>(self, visitor: &V) -> Error {
        de::Error::invalid_type(self.unexpected(), visitor)
    }

    fn visit_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let items = self.kept_items();
        let len = items.len();
        let mut seq = SeqAccess {
            items,
            skip: self.skip,
        };
        let value = visitor.visit_seq(&mut seq)?;
        if seq.items.len() == 0 {
            Ok(value)
        } else {
            Err(de::Error::invalid_length(len, &"fewer elements in array"))
        }
    }

    fn visit_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        let entries = self.kept_entries();
        let len = entries.len();
        let mut map = MapAccess {
            entries,
            value: None,
            skip: self.skip,
        };
        let value = visitor.visit_map(&mut map)?;
        if map.entries.len() == 0 {
            Ok(value)
        } else {
            Err(de::Error::invalid_length(len, &"fewer elements in map"))
        }
    }

    /// A number, as `serde_json::Number` hands it to a visitor.
    fn number<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node.value {
            Value::Int(i) if i >= 0 => visitor.visit_u64(i as u64),
            Value::Int(i) => visitor.visit_i64(i),
            Value::Float(f) if f.is_finite() => visitor.visit_f64(f),
            _ => Err(self.invalid_type(&visitor)),
        }
    }
}

macro_rules! numbers {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
                self.number(visitor)
            }
        )*
    };
}

impl<'a> Deserializer<'a> for NodeDe<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(_) => self.number(visitor),
            Value::Float(f) if f.is_finite() => visitor.visit_f64(*f),
            Value::Float(_) => visitor.visit_unit(),
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Seq(_) => self.visit_seq(visitor),
            Value::Map(_) => self.visit_map(visitor),
        }
    }

    numbers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node.value {
            Value::Bool(b) => visitor.visit_bool(b),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_char<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Str(s) => visitor.visit_borrowed_str(s),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Seq(_) => self.visit_seq(visitor),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node.value {
            Value::Null => visitor.visit_none(),
            Value::Float(f) if !f.is_finite() => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Float(f) if !f.is_finite() => visitor.visit_unit(),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node.value {
            Value::Seq(_) => self.visit_seq(visitor),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'a>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node.value {
            Value::Map(_) => self.visit_map(visitor),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.node.value {
            Value::Seq(_) => self.visit_seq(visitor),
            Value::Map(_) => self.visit_map(visitor),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Str(s) => visitor.visit_enum(EnumAccess {
                variant: s,
                value: None,
            }),
            Value::Map(_) => {
                let mut entries = self.kept_entries();
                match (entries.next(), entries.next()) {
                    (Some((k, v)), None) => visitor.visit_enum(EnumAccess {
                        variant: &k.name,
                        value: Some(NodeDe {
                            node: v,
                            skip: self.skip,
                        }),
                    }),
                    _ => Err(de::Error::invalid_value(
                        Unexpected::Map,
                        &"map with a single key",
                    )),
                }
            }
            _ => Err(de::Error::invalid_type(self.unexpected(), &"string or map")),
        }
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

struct SeqAccess<'a, I> {
    items: I,
    skip: &'a HashSet<Range<usize>>,
}

impl<'a, I: ExactSizeIterator<Item = &'a Node>> de::SeqAccess<'a> for SeqAccess<'a, I> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            Some(node) => seed
                .deserialize(NodeDe {
                    node,
                    skip: self.skip,
                })
                .map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'a, I> {
    entries: I,
    value: Option<&'a Node>,
    skip: &'a HashSet<Range<usize>>,
}

impl<'a, I: ExactSizeIterator<Item = &'a (Key, Node)>> de::MapAccess<'a> for MapAccess<'a, I> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                let key = de::value::BorrowedStrDeserializer::<Error>::new(&key.name);
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'a>>(&mut self, seed: T) -> Result<T::Value, Error> {
        match self.value.take() {
            Some(node) => seed.deserialize(NodeDe {
                node,
                skip: self.skip,
            }),
            None => Err(de::Error::custom("value is missing")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct EnumAccess<'a> {
    variant: &'a str,
    value: Option<NodeDe<'a>>,
}

impl<'a> de::EnumAccess<'a> for EnumAccess<'a> {
    type Error = Error;
    type Variant = VariantAccess<'a>;

    fn variant_seed<V: DeserializeSeed<'a>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantAccess<'a>), Error> {
        let variant = de::value::BorrowedStrDeserializer::<Error>::new(self.variant);
        let v = seed.deserialize(variant)?;
        Ok((v, VariantAccess { value: self.value }))
    }
}

struct VariantAccess<'a> {
    value: Option<NodeDe<'a>>,
}

impl<'a> de::VariantAccess<'a> for VariantAccess<'a> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.value {
            Some(value) => serde::Deserialize::deserialize(value),
            None => Ok(()),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'a>>(self, seed: T) -> Result<T::Value, Error> {
        match self.value {
            Some(value) => seed.deserialize(value),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"newtype variant",
            )),
        }
    }

    fn tuple_variant<V: Visitor<'a>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Some(value) if matches!(value.node.value, Value::Seq(_)) => {
                if value.kept_items().len() == 0 {
                    visitor.visit_unit()
                } else {
                    value.visit_seq(visitor)
                }
            }
            Some(value) => Err(de::Error::invalid_type(
                value.unexpected(),
                &"tuple variant",
            )),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"tuple variant",
            )),
        }
    }

    fn struct_variant<V: Visitor<'a>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.value {
            Some(value) if matches!(value.node.value, Value::Map(_)) => value.visit_map(visitor),
            Some(value) => Err(de::Error::invalid_type(
                value.unexpected(),
                &"struct variant",
            )),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"struct variant",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema;
    use crate::config::yaml;

    /// Reads `node` both ways; the results (or the error messages) must be
    /// the same.
    fn same<T>(node: &Node, skip: &HashSet<Range<usize>>, what: &str)
    where
        T: serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let json = if skip.is_empty() {
            node.to_json()
        } else {
            node.to_json_pruned(skip)
        };
        let by_value = serde_json::from_value::<T>(json).map_err(|e| e.to_string());
        let direct = from_node::<T>(node, skip).map_err(|e| e.to_string());
        assert_eq!(
            format!("{direct:?}"),
            format!("{by_value:?}"),
            "{what} as {}",
            std::any::type_name::<T>()
        );
    }

    fn all_ways(text: &str) {
        let (root, _) = yaml::parse(text);
        let Some(root) = root else { return };
        let none = HashSet::new();
        same::<schema::ConfigFile>(&root, &none, text);
        same::<schema::Service>(&root, &none, text);
        same::<serde_json::Value>(&root, &none, text);
        same::<Vec<schema::PortDef>>(&root, &none, text);
        same::<std::collections::BTreeMap<String, schema::EnvValue>>(&root, &none, text);
        if let Some(services) = root.get("services") {
            same::<schema::ConfigFile>(&root, &HashSet::from([services.span.clone()]), text);
            if let yaml::Value::Map(entries) = &services.value {
                for (key, node) in entries {
                    same::<Option<schema::Service>>(node, &none, text);
                    // Each value of the service left out in turn.
                    if let yaml::Value::Map(fields) = &node.value {
                        for (k, v) in fields {
                            let skip = HashSet::from([v.span.clone()]);
                            same::<schema::Service>(
                                node,
                                &skip,
                                &format!("{text} less {}", k.name),
                            );
                        }
                    }
                    let _ = key;
                }
            }
        }
    }

    #[test]
    fn reads_as_serde_json_reads_the_json_form() {
        let docs = [
            "services:\n  api:\n    command: server\n    args: [--port, \"8080\"]\n    env: {A: 1, B: true, C: 1.5, D: x, E: -3, F: .inf, G: ~}\n    ports: [{container_port: 80, host_port: 8080, protocol: udp}]\n    resources: {cpu_cores: 0.5, memory_mb: 128}\n",
            "services:\n  api:\n    image: nginx\n    ports: [{container_port: 70000}]\n",
            "services:\n  api:\n    image: nginx\n    ports: [{container_port: -1}]\n",
            "services:\n  api:\n    image: nginx\n    ports: [{container_port: 1.5}]\n",
            "services:\n  api:\n    image: nginx\n    ports: [{container_port: \"80\"}]\n",
            "services:\n  api:\n    image: nginx\n    ports: {container_port: 80}\n",
            "services:\n  api:\n    command: [a, b]\n    replicas: -2\n    restart: always\n",
            "services:\n  api:\n    command: x\n    restart: {policy: on-failure, max_restarts: 3}\n",
            "services:\n  api:\n    command: x\n    restart: sometimes\n",
            "services:\n  api:\n    command: x\n    service_type: Container\n    bogus: 1\n",
            "services:\n  api:\n    command: x\n    service_type: [Container]\n",
            "services:\n  api:\n    command: x\n    service_type: {Container: 1}\n",
            "services:\n  api:\n    command: x\n    service_type: {Container: ~, Process: ~}\n",
            "services:\n  api:\n    command: x\n    enabled: yes\n    oneshot: .nan\n",
            "services:\n  api:\n    command: x\n    health_check: {endpoint: /h, interval_seconds: 1e400}\n",
            "services:\n  api:\n    command: x\n    labels: {a: 1}\n",
            "services:\n  api:\n    command: x\n    dependencies: [a, 1, true, ~]\n",
            "version: 1\nproject: p\nvariables: {a: [1, -2, 3.5, x, {b: ~}], c: .inf}\nsecrets: [A]\nservices: {}\n",
            "project: [p]\nservices: {a: {command: x}}\n",
            "infrastructure: {container_runtime: Docker, network: {mode: Bridge}}\nservices: {a: {command: x}}\n",
            "infrastructure: {container_runtime: containerd}\nservices: ~\n",
            "deployment: {strategy: Sequential, max_parallel: 0, blue_green: {keep_seconds: 5}}\nservices: {a: ~}\n",
            "deployment: {strategy: 3}\n",
            "- 1\n- {container_port: 80}\n",
            "[{container_port: 80, host_ip: 127.0.0.1}, {container_port: 81, unknown: 1}]\n",
            "A: 1\nB: -1\nC: 1.0\nD: [x]\nE: {x: 1}\n",
            "just a string\n",
            "12\n",
            "~\n",
        ];
        for text in docs {
            all_ways(text);
        }
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut read = 0;
        for entry in walk(&examples) {
            if entry.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && let Ok(text) = std::fs::read_to_string(&entry)
            {
                all_ways(&text);
                read += 1;
            }
        }
        assert!(read > 0, "no example configuration found");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
