//! A small, bounded XML tree for SOAP envelopes and CLIXML: namespace prefixes are dropped
//! (WS-Man peers use varying prefixes), depth, element count and input size are capped, and
//! errors give the byte offset.

use quick_xml::events::Event;
use quick_xml::reader::Reader;

/// Largest document accepted (WinRM peers cap envelopes at 150-500 KiB; leave room).
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Most elements accepted in one document.
pub const MAX_ELEMENTS: usize = 100_000;

/// Why a document is not acceptable XML; `offset` is the byte offset in the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail} (at byte {offset})")]
pub struct XmlError {
    pub offset: u64,
    pub detail: String,
}

/// An element with its local name, attributes (local names) and text (concatenated, unescaped).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

fn local(name: &str) -> String {
    name.rsplit_once(':').map_or(name, |(_, l)| l).to_string()
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every element in the subtree (self included), depth first, in document order.
    pub fn descendants(&self) -> Vec<&Element> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            out.push(e);
            for c in e.children.iter().rev() {
                stack.push(c);
            }
        }
        out
    }

    /// The first element named `name` anywhere in the subtree.
    pub fn find(&self, name: &str) -> Option<&Element> {
        self.descendants().into_iter().find(|e| e.name == name)
    }
}

/// Parse a whole document into its root element.
pub fn parse(text: &str) -> Result<Element, XmlError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(XmlError {
            offset: 0,
            detail: format!(
                "document of {} bytes is larger than the {MAX_DOCUMENT_BYTES}-byte limit",
                text.len()
            ),
        });
    }
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let offset = reader.buffer_position();
        let err = |detail: String| XmlError { offset, detail };
        let ev = reader
            .read_event()
            .map_err(|e| err(format!("malformed XML: {e}")))?;
        match ev {
            Event::Start(s) | Event::Empty(s) if root.is_some() => {
                let _ = s;
                return Err(err("content after the root element".into()));
            }
            Event::Start(ref s) | Event::Empty(ref s) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(err(format!("more than {MAX_ELEMENTS} elements")));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(err(format!("nesting deeper than {MAX_DEPTH}")));
                }
                let mut el = Element {
                    name: local(s.name().as_ref()),
                    ..Element::default()
                };
                for a in s.attributes() {
                    let a = a.map_err(|e| err(format!("bad attribute: {e}")))?;
                    let v = a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|e| err(format!("bad attribute value: {e}")))?;
                    el.attrs.push((local(a.key.as_ref()), v.into_owned()));
                }
                if matches!(ev, Event::Empty(_)) {
                    match stack.last_mut() {
                        Some(p) => p.children.push(el),
                        None => root = Some(el),
                    }
                } else {
                    stack.push(el);
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| err("end tag without a start".into()))?;
                match stack.last_mut() {
                    Some(p) => p.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&t);
                } else if !t.chars().all(char::is_whitespace) {
                    return Err(err("text outside the root element".into()));
                }
            }
            Event::GeneralRef(r) => {
                if let Some(cur) = stack.last_mut() {
                    let name: &str = &r;
                    let entity = format!("&{name};");
                    let s = quick_xml::escape::unescape(&entity)
                        .map_err(|e| err(format!("bad entity {entity}: {e}")))?;
                    cur.text.push_str(&s);
                }
            }
            Event::CData(c) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&c);
                }
            }
            Event::DocType(_) => return Err(err("DOCTYPE is not accepted".into())),
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err(XmlError {
            offset: u64::try_from(text.len()).unwrap_or(u64::MAX),
            detail: format!(
                "document ends inside <{}>",
                stack.last().map_or("", |e| &e.name)
            ),
        });
    }
    root.ok_or(XmlError {
        offset: 0,
        detail: "no root element".into(),
    })
}

/// Escape text for element content or attribute values.
pub fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_dropped_text_unescaped() {
        let e = parse(r#"<s:A xmlns:s="u"><s:B x:N="v&amp;w">a &lt; b</s:B><C/></s:A>"#).unwrap();
        assert_eq!(e.name, "A");
        let b = e.child("B").unwrap();
        assert_eq!(b.attr("N"), Some("v&w"));
        assert_eq!(b.text, "a < b");
        assert!(e.find("C").is_some());
    }

    #[test]
    fn malformed_documents_fail_with_offsets() {
        for bad in [
            "<a><b></a>",
            "<a>",
            "",
            "<a/><b/>",
            "text",
            "<a x='1' x='2'/>",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.detail.is_empty(), "{bad}");
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).unwrap_err().detail.contains("deeper"));
    }
}
