//! A small, bounded XML tree for SOAP replies. Element names are kept by local name (prefixes
//! dropped); the polymorphic `xsi:type` attribute is resolved by namespace URI, because vcsim
//! writes it as `XMLSchema-instance:type` and real servers as `xsi:type`.

use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

/// The namespace of `xsi:type`.
pub const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// Deepest nesting accepted (real replies nest about 15 deep).
pub const MAX_DEPTH: usize = 96;
/// Most elements accepted in one reply (a 100-VM page is ~100k elements).
pub const MAX_ELEMENTS: usize = 4_000_000;

/// One element: local name, `xsi:type` (local part), the unqualified `type` attribute
/// (MoRef type), text content and children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub xsi_type: Option<String>,
    pub type_attr: Option<String>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// First child with this local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All children with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Follow a `/`-separated path of local names.
    pub fn path(&self, path: &str) -> Option<&Element> {
        path.split('/').try_fold(self, |e, p| e.child(p))
    }

    /// Trimmed text of a child, if present.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }
}

/// A parse failure: what and where (byte offset in the reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlError {
    pub offset: u64,
    pub reason: String,
}

impl std::fmt::Display for XmlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XML error at byte {}: {}", self.offset, self.reason)
    }
}

struct Frame {
    el: Element,
    /// Namespace declarations made on this element: (prefix, uri); "" is the default.
    ns: Vec<(String, String)>,
}

/// Parse a whole document into its root element. Pure and bounded: depth, element count and
/// input size (the caller limits the body) are all capped.
pub fn parse(bytes: &[u8]) -> Result<Element, XmlError> {
    let mut reader = Reader::from_reader(bytes);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    let mut buf = Vec::new();
    loop {
        let pos = reader.buffer_position();
        let err = |reason: String| XmlError {
            offset: pos,
            reason,
        };
        let ev = reader
            .read_event_into(&mut buf)
            .map_err(|e| err(e.to_string()))?;
        match ev {
            Event::Start(ref s) | Event::Empty(ref s) => {
                let empty = matches!(ev, Event::Empty(_));
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(err(format!("more than {MAX_ELEMENTS} elements")));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(err(format!("nesting deeper than {MAX_DEPTH}")));
                }
                if root.is_some() {
                    return Err(err("content after the root element".into()));
                }
                let frame = start_frame(s, &stack).map_err(err)?;
                if empty {
                    finish(frame.el, &mut stack, &mut root);
                } else {
                    stack.push(frame);
                }
            }
            Event::End(_) => {
                let Some(frame) = stack.pop() else {
                    return Err(err("end tag without a start tag".into()));
                };
                finish(frame.el, &mut stack, &mut root);
            }
            Event::Text(t) => {
                push_text(&mut stack, &t.xml10_content(), &root).map_err(err)?;
            }
            Event::CData(t) => {
                push_text(&mut stack, &t.xml10_content(), &root).map_err(err)?;
            }
            Event::GeneralRef(r) => {
                let s = match r.resolve_char_ref().map_err(|e| err(e.to_string()))? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.xml10_content();
                        match name.as_ref() {
                            "lt" => "<".into(),
                            "gt" => ">".into(),
                            "amp" => "&".into(),
                            "quot" => "\"".into(),
                            "apos" => "'".into(),
                            other => return Err(err(format!("unknown entity &{other};"))),
                        }
                    }
                };
                push_text(&mut stack, &s, &root).map_err(err)?;
            }
            Event::DocType(_) => return Err(err("DOCTYPE is not allowed in SOAP".into())),
            Event::Eof => {
                if !stack.is_empty() {
                    return Err(err(format!(
                        "document ends inside <{}>",
                        stack[stack.len() - 1].el.name
                    )));
                }
                return root.ok_or_else(|| err("no root element".into()));
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
        buf.clear();
    }
}

fn push_text(stack: &mut [Frame], s: &str, root: &Option<Element>) -> Result<(), String> {
    match stack.last_mut() {
        Some(f) => {
            f.el.text.push_str(s);
            Ok(())
        }
        None if s.trim().is_empty() => Ok(()),
        None if root.is_some() => Err("text after the root element".into()),
        None => Err("text before the root element".into()),
    }
}

fn finish(el: Element, stack: &mut [Frame], root: &mut Option<Element>) {
    match stack.last_mut() {
        Some(parent) => parent.el.children.push(el),
        None => *root = Some(el),
    }
}

fn lookup<'a>(stack: &'a [Frame], own: &'a [(String, String)], prefix: &str) -> Option<&'a str> {
    own.iter()
        .chain(stack.iter().rev().flat_map(|f| f.ns.iter()))
        .find(|(p, _)| p == prefix)
        .map(|(_, u)| u.as_str())
}

fn start_frame(s: &BytesStart<'_>, stack: &[Frame]) -> Result<Frame, String> {
    let name = s.local_name().as_ref().to_string();
    let mut ns = Vec::new();
    let mut attrs = Vec::new();
    for a in s.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        let key = a.key.as_ref().to_string();
        let value = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| e.to_string())?
            .into_owned();
        if key == "xmlns" {
            ns.push((String::new(), value));
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            ns.push((p.to_string(), value));
        } else {
            attrs.push((key, value));
        }
    }
    let mut el = Element {
        name,
        ..Element::default()
    };
    for (key, value) in attrs {
        match key.split_once(':') {
            Some((prefix, "type")) if lookup(stack, &ns, prefix) == Some(XSI_NS) => {
                let local = value.rsplit(':').next().unwrap_or(&value);
                el.xsi_type = Some(local.to_string());
            }
            None if key == "type" => el.type_attr = Some(value),
            _ => {}
        }
    }
    Ok(Frame { el, ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_xsi_type_by_namespace_not_prefix() {
        let doc = r#"<a xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance">
            <val XMLSchema-instance:type="ArrayOfVirtualDevice"><b>x &amp; &#65;</b></val>
            <other xmlns:xsi="urn:not-xsi" xsi:type="Nope"/><m type="VirtualMachine">vm-1</m></a>"#;
        let root = parse(doc.as_bytes()).unwrap();
        let val = root.child("val").unwrap();
        assert_eq!(val.xsi_type.as_deref(), Some("ArrayOfVirtualDevice"));
        assert_eq!(val.child_text("b"), Some("x & A"));
        assert_eq!(root.child("other").unwrap().xsi_type, None);
        assert_eq!(
            root.child("m").unwrap().type_attr.as_deref(),
            Some("VirtualMachine")
        );
    }

    #[test]
    fn rejects_bad_documents_with_offsets() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "<!DOCTYPE x><a/>",
            "<a>&foo;</a>",
            "text<a/>",
        ] {
            let e = parse(bad.as_bytes()).unwrap_err();
            assert!(!e.reason.is_empty(), "{bad}");
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert!(
            parse(deep.as_bytes())
                .unwrap_err()
                .reason
                .contains("nesting")
        );
    }
}
