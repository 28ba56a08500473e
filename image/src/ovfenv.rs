//! The OVF environment document (`ovf-env.xml`) vSphere gives a deployed VM. The appliance
//! declares only the `iso` transport (a CD-ROM holding the document): the other,
//! `com.vmware.guestInfo`, is read through the VMware backdoor I/O port, which needs either
//! open-vm-tools in the image or port I/O from godwit (unsafe code, forbidden here).
//! `<Environment><PropertySection><Property oe:key=".." oe:value=".."/>...`.

use crate::xml::escape;
use crate::{Error, Result};
use quick_xml::events::Event;
use std::collections::BTreeMap;

/// Largest environment document accepted.
pub const MAX_ENV_BYTES: usize = 1 << 20;

/// The properties of an OVF environment, by key. Namespace prefixes may be anything; the
/// `key`/`value` attributes of `Property` elements inside `PropertySection` are read.
pub fn parse(doc: &[u8]) -> Result<BTreeMap<String, String>> {
    if doc.len() > MAX_ENV_BYTES {
        return Err(Error::invalid(
            "ovf-env.xml",
            format!("{} bytes is more than {MAX_ENV_BYTES}", doc.len()),
        ));
    }
    let text = std::str::from_utf8(doc)
        .map_err(|e| Error::invalid("ovf-env.xml", format!("not UTF-8: {e}")))?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut props = BTreeMap::new();
    let mut depth_in_section: Option<usize> = None;
    let mut depth = 0usize;
    let mut saw_env = false;
    loop {
        let pos = reader.buffer_position();
        let ev = reader
            .read_event()
            .map_err(|e| Error::invalid("ovf-env.xml", format!("at byte {pos}: {e}")))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let is_empty = matches!(ev, Event::Empty(_));
                let local = e.local_name();
                let name = local.as_ref();
                if depth == 0 {
                    if name != "Environment" {
                        return Err(Error::invalid(
                            "ovf-env.xml",
                            "the root element is not Environment",
                        ));
                    }
                    saw_env = true;
                }
                if name == "PropertySection" && !is_empty {
                    depth_in_section = Some(depth);
                }
                if name == "Property" && depth_in_section.is_some() {
                    let (mut key, mut value) = (None, None);
                    for a in e.attributes() {
                        let a = a.map_err(|err| {
                            Error::invalid("ovf-env.xml", format!("at byte {pos}: {err}"))
                        })?;
                        let v = a
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(|err| {
                                Error::invalid("ovf-env.xml", format!("at byte {pos}: {err}"))
                            })?
                            .into_owned();
                        match a.key.local_name().as_ref() {
                            "key" => key = Some(v),
                            "value" => value = Some(v),
                            _ => {}
                        }
                    }
                    let key = key.ok_or_else(|| {
                        Error::invalid("ovf-env.xml", format!("Property at byte {pos} has no key"))
                    })?;
                    props.insert(key, value.unwrap_or_default());
                }
                if !is_empty {
                    depth += 1;
                }
            }
            Event::End(ref e) => {
                depth = depth.saturating_sub(1);
                if e.local_name().as_ref() == "PropertySection" && depth_in_section == Some(depth) {
                    depth_in_section = None;
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_env {
        return Err(Error::invalid("ovf-env.xml", "no Environment element"));
    }
    Ok(props)
}

/// Write an environment document as vSphere does (used by tests and `godwit image ovfenv`).
pub fn encode(props: &BTreeMap<String, String>) -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Environment\n     \
         xmlns=\"http://schemas.dmtf.org/ovf/environment/1\"\n     \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"\n     \
         xmlns:oe=\"http://schemas.dmtf.org/ovf/environment/1\"\n     \
         xmlns:ve=\"http://www.vmware.com/schema/ovfenv\"\n     oe:id=\"\">\n   \
         <PlatformSection>\n      <Kind>VMware ESXi</Kind>\n   </PlatformSection>\n   <PropertySection>\n",
    );
    for (k, v) in props {
        s.push_str(&format!(
            "         <Property oe:key=\"{}\" oe:value=\"{}\"/>\n",
            escape(k),
            escape(v)
        ));
    }
    s.push_str("   </PropertySection>\n</Environment>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vsphere_document() {
        let doc = br#"<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
  xmlns:ve="http://www.vmware.com/schema/ovfenv" oe:id="" ve:vCenterId="vm-42">
  <PlatformSection><Kind>VMware ESXi</Kind><Version>8.0.0</Version></PlatformSection>
  <PropertySection>
    <Property oe:key="godwit.hostname" oe:value="mig-01"/>
    <Property oe:key="godwit.admin.password" oe:value="a&amp;b&lt;c&quot;d"/>
  </PropertySection>
  <ve:EthernetAdapterSection><ve:Adapter ve:mac="00:50:56:aa:bb:cc" ve:network="VM Network"/></ve:EthernetAdapterSection>
</Environment>"#;
        let p = parse(doc).unwrap();
        assert_eq!(p["godwit.hostname"], "mig-01");
        assert_eq!(p["godwit.admin.password"], "a&b<c\"d");
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn refuses_other_documents() {
        assert!(parse(b"<Envelope/>").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"<Environment><PropertySection><Property oe:value='x'/></PropertySection></Environment>").is_err());
        assert!(parse(&vec![b' '; MAX_ENV_BYTES + 1]).is_err());
        assert!(parse(b"<Environment><PropertySection></Environment>").is_err());
    }

    #[test]
    fn properties_outside_the_section_are_ignored() {
        let p = parse(
            b"<Environment><Property oe:key='a' oe:value='1'/><PropertySection/></Environment>",
        )
        .unwrap();
        assert!(p.is_empty());
    }

    proptest! {
        #[test]
        fn round_trip(props in proptest::collection::btree_map("[a-z.]{1,20}", "\\PC{0,40}", 0..8)) {
            prop_assert_eq!(parse(encode(&props).as_bytes()).unwrap(), props);
        }

        #[test]
        fn random_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&data);
        }
    }
}
