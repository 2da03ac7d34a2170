//! A created or destroyed spec's lines written straight from the spec, as a
//! serde serializer: the same bytes as the direct emitter of `diff` writes
//! from the spec's canonical `serde_json` value, pruned at the top, without
//! building that value first. It writes only what that emitter writes (maps
//! of scalars, lists and maps, lists of scalars and maps, scalars whose style
//! is certain) and declines anything else, and any key `sensitive` (where a
//! secret's digest may be): the caller then takes the canonical value's path.

use std::fmt::Write as _;

use serde::ser::{self, Serialize};

/// The emitter declines this value; the caller writes it another way.
#[derive(Debug)]
pub(crate) struct Decline;

impl std::fmt::Display for Decline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a shape the direct emitter does not write")
    }
}

impl std::error::Error for Decline {}

impl ser::Error for Decline {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Decline
    }
}

/// The lines of `value` (a struct or map), its entries whose value is an
/// empty list or map left out; `None` where the emitter declines or nothing
/// is left.
pub(crate) fn lines<T: Serialize>(value: &T) -> Option<String> {
    let mut out = String::with_capacity(256);
    value
        .serialize(Lines {
            out: &mut out,
            indent: 0,
            at: At::Root,
        })
        .ok()?;
    (!out.is_empty()).then_some(out)
}

/// Where the value being written stands.
#[derive(Clone, Copy)]
enum At {
    /// The whole document: a map whose empty entries are left out.
    Root,
    /// After `key:`, the key's line starting at `start`; `prune`: an empty
    /// list or map takes its key away.
    Value { start: usize, prune: bool },
    /// After `- `.
    Item,
}

/// A value written at `indent` (the indentation of its key, or of its list).
struct Lines<'a> {
    out: &'a mut String,
    indent: usize,
    at: At,
}

fn spaces(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

impl<'a> Lines<'a> {
    fn scalar(self, write: impl FnOnce(&mut String) -> Option<()>) -> Result<(), Decline> {
        match self.at {
            At::Root => return Err(Decline),
            At::Value { .. } => self.out.push(' '),
            At::Item => {}
        }
        write(self.out).ok_or(Decline)?;
        self.out.push('\n');
        Ok(())
    }

    fn text(self, s: &str) -> Result<(), Decline> {
        self.scalar(|out| super::diff::fast_scalar_str(s, out))
    }

    fn map(self) -> Result<MapLines<'a>, Decline> {
        let (indent, first_line, empty) = match self.at {
            At::Root => (0, false, Empty::Keep),
            At::Value { start, prune } => (
                self.indent + 2,
                true,
                if prune {
                    Empty::Drop(start)
                } else {
                    Empty::Write
                },
            ),
            At::Item => (self.indent + 2, false, Empty::Decline),
        };
        Ok(MapLines {
            out: self.out,
            indent,
            first_line,
            prune: matches!(self.at, At::Root),
            empty,
            written: 0,
            start: 0,
        })
    }

    fn seq(self) -> Result<SeqLines<'a>, Decline> {
        let At::Value { start, prune } = self.at else {
            return Err(Decline);
        };
        Ok(SeqLines {
            out: self.out,
            indent: self.indent,
            empty: if prune {
                Empty::Drop(start)
            } else {
                Empty::Write
            },
            written: 0,
        })
    }
}

/// What an empty list or map becomes.
#[derive(Clone, Copy)]
enum Empty {
    /// Nothing (the whole document).
    Keep,
    /// ` {}` or ` []` after its key.
    Write,
    /// Its key's line is taken away, from this offset.
    Drop(usize),
    /// The emitter declines (an empty map in a list).
    Decline,
}

struct MapLines<'a> {
    out: &'a mut String,
    /// The indentation of the entries.
    indent: usize,
    /// The first entry starts a new line (a map that is a key's value).
    first_line: bool,
    /// Leave out the entries whose value is an empty list or map.
    prune: bool,
    empty: Empty,
    written: usize,
    /// Where the current entry's line starts.
    start: usize,
}

impl MapLines<'_> {
    fn key(&mut self, k: &str) -> Result<(), Decline> {
        if k == "sensitive" {
            return Err(Decline);
        }
        self.start = self.out.len();
        if self.written == 0 {
            if self.first_line {
                self.out.push('\n');
                spaces(self.out, self.indent);
            }
        } else {
            spaces(self.out, self.indent);
        }
        super::diff::fast_scalar_str(k, self.out).ok_or(Decline)?;
        self.out.push(':');
        Ok(())
    }

    fn value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Decline> {
        let start = self.start;
        v.serialize(Lines {
            out: self.out,
            indent: self.indent,
            at: At::Value {
                start,
                prune: self.prune,
            },
        })?;
        if self.out.len() > start {
            self.written += 1;
        }
        Ok(())
    }

    fn finish(self) -> Result<(), Decline> {
        if self.written > 0 {
            return Ok(());
        }
        match self.empty {
            Empty::Keep => {}
            Empty::Write => self.out.push_str(" {}\n"),
            Empty::Drop(start) => self.out.truncate(start),
            Empty::Decline => return Err(Decline),
        }
        Ok(())
    }
}

struct SeqLines<'a> {
    out: &'a mut String,
    indent: usize,
    empty: Empty,
    written: usize,
}

impl SeqLines<'_> {
    fn item<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Decline> {
        if self.written == 0 {
            self.out.push('\n');
        }
        self.written += 1;
        spaces(self.out, self.indent);
        self.out.push_str("- ");
        v.serialize(Lines {
            out: self.out,
            indent: self.indent,
            at: At::Item,
        })
    }

    fn finish(self) -> Result<(), Decline> {
        if self.written > 0 {
            return Ok(());
        }
        match self.empty {
            Empty::Write => self.out.push_str(" []\n"),
            Empty::Drop(start) => self.out.truncate(start),
            Empty::Keep | Empty::Decline => return Err(Decline),
        }
        Ok(())
    }
}

impl<'a> ser::Serializer for Lines<'a> {
    type Ok = ();
    type Error = Decline;
    type SerializeSeq = SeqLines<'a>;
    type SerializeTuple = SeqLines<'a>;
    type SerializeTupleStruct = SeqLines<'a>;
    type SerializeTupleVariant = ser::Impossible<(), Decline>;
    type SerializeMap = MapLines<'a>;
    type SerializeStruct = MapLines<'a>;
    type SerializeStructVariant = ser::Impossible<(), Decline>;

    fn serialize_bool(self, v: bool) -> Result<(), Decline> {
        self.scalar(|out| {
            out.push_str(if v { "true" } else { "false" });
            Some(())
        })
    }
    fn serialize_i8(self, v: i8) -> Result<(), Decline> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Decline> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Decline> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Decline> {
        self.scalar(|out| write!(out, "{v}").ok())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Decline> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Decline> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Decline> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Decline> {
        self.scalar(|out| write!(out, "{v}").ok())
    }
    fn serialize_f32(self, _: f32) -> Result<(), Decline> {
        Err(Decline)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Decline> {
        // As the canonical value holds it: a number, or null when not finite;
        // `serde_yaml` writes exponents without `+`: 2.5e20, 1e-7.
        self.scalar(|out| {
            match serde_json::Number::from_f64(v) {
                Some(n) => out.push_str(&n.to_string().replace("e+", "e")),
                None => out.push_str("null"),
            }
            Some(())
        })
    }
    fn serialize_char(self, _: char) -> Result<(), Decline> {
        Err(Decline)
    }
    fn serialize_str(self, v: &str) -> Result<(), Decline> {
        self.text(v)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Decline> {
        Err(Decline)
    }
    fn serialize_none(self) -> Result<(), Decline> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Decline> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Decline> {
        self.scalar(|out| {
            out.push_str("null");
            Some(())
        })
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Decline> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Decline> {
        self.text(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Decline> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Decline> {
        Err(Decline)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<SeqLines<'a>, Decline> {
        self.seq()
    }
    fn serialize_tuple(self, _: usize) -> Result<SeqLines<'a>, Decline> {
        self.seq()
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<SeqLines<'a>, Decline> {
        self.seq()
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Decline> {
        Err(Decline)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<MapLines<'a>, Decline> {
        self.map()
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<MapLines<'a>, Decline> {
        self.map()
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Decline> {
        Err(Decline)
    }
}

impl ser::SerializeSeq for SeqLines<'_> {
    type Ok = ();
    type Error = Decline;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Decline> {
        self.item(v)
    }
    fn end(self) -> Result<(), Decline> {
        self.finish()
    }
}

impl ser::SerializeTuple for SeqLines<'_> {
    type Ok = ();
    type Error = Decline;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Decline> {
        self.item(v)
    }
    fn end(self) -> Result<(), Decline> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for SeqLines<'_> {
    type Ok = ();
    type Error = Decline;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Decline> {
        self.item(v)
    }
    fn end(self) -> Result<(), Decline> {
        self.finish()
    }
}

impl ser::SerializeMap for MapLines<'_> {
    type Ok = ();
    type Error = Decline;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), Decline> {
        // A key is written as the canonical value holds it: a string.
        match serde_json::to_value(k).map_err(|_| Decline)? {
            serde_json::Value::String(s) => self.key(&s),
            _ => Err(Decline),
        }
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Decline> {
        self.value(v)
    }
    fn end(self) -> Result<(), Decline> {
        self.finish()
    }
}

impl ser::SerializeStruct for MapLines<'_> {
    type Ok = ();
    type Error = Decline;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), Decline> {
        self.key(key)?;
        self.value(v)
    }
    fn end(self) -> Result<(), Decline> {
        self.finish()
    }
}
