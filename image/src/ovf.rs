//! The OVF descriptor of the appliance (OVF 1.0 envelope, which vSphere, ovftool and
//! govmomi all read): one VirtualSystem with 2 vCPU and 1 GiB, a paravirtual SCSI (pvscsi)
//! controller with the streamOptimized disk, a vmxnet3 NIC, an IDE CD-ROM for the OVF
//! environment ISO, optional EFI firmware (+ Secure Boot), and a ProductSection with the
//! vApp properties of [`crate::vapp::PROPERTIES`].

use crate::vapp::PROPERTIES;
use crate::xml::escape;

/// Firmware the VM is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Efi,
    /// EFI with Secure Boot on (the image boots through Microsoft-signed shim).
    EfiSecureBoot,
}

impl std::str::FromStr for Firmware {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "bios" => Ok(Firmware::Bios),
            "efi" => Ok(Firmware::Efi),
            "efi-secureboot" => Ok(Firmware::EfiSecureBoot),
            _ => Err(crate::Error::invalid(
                "firmware",
                format!("{s:?} is not bios, efi or efi-secureboot"),
            )),
        }
    }
}

/// What the descriptor describes.
#[derive(Clone, Debug)]
pub struct Spec {
    /// VM name (also the VirtualSystem id).
    pub name: String,
    pub version: String,
    /// The disk's file name in the OVA.
    pub disk_file: String,
    /// Exact size of that file.
    pub disk_file_size: u64,
    /// Virtual size of the disk in bytes: the data partition grows to fill it at boot.
    pub capacity: u64,
    /// Bytes of the disk that hold data (`ovf:populatedSize`): what a thin-provisioned
    /// deployment takes at first, far less than `capacity`.
    pub populated: Option<u64>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub firmware: Firmware,
    /// `vmx-13` is ESXi 6.5 and later.
    pub hardware_version: String,
}

impl Spec {
    pub fn new(version: &str, disk_file: &str, disk_file_size: u64, capacity: u64) -> Spec {
        Spec {
            name: "godwit".into(),
            version: version.into(),
            disk_file: disk_file.into(),
            disk_file_size,
            capacity,
            populated: None,
            cpus: 2,
            memory_mib: 1024,
            firmware: Firmware::Bios,
            hardware_version: "vmx-13".into(),
        }
    }
}

fn item(out: &mut String, fields: &[(&str, String)]) {
    out.push_str("      <Item>\n");
    for (k, v) in fields {
        out.push_str(&format!("        <rasd:{k}>{}</rasd:{k}>\n", escape(v)));
    }
    out.push_str("      </Item>\n");
}

/// The descriptor text.
pub fn descriptor(spec: &Spec) -> String {
    let e = |s: &str| escape(s);
    let mut o = String::new();
    o.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    o.push_str(
        "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" \
         xmlns:cim=\"http://schemas.dmtf.org/wbem/wscim/1/common\" \
         xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\" \
         xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData\" \
         xmlns:vmw=\"http://www.vmware.com/schema/ovf\" \
         xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n",
    );
    o.push_str(&format!(
        "  <References>\n    <File ovf:href=\"{}\" ovf:id=\"file1\" ovf:size=\"{}\"/>\n  </References>\n",
        e(&spec.disk_file),
        spec.disk_file_size
    ));
    let populated = spec
        .populated
        .map(|p| format!(" ovf:populatedSize=\"{p}\""))
        .unwrap_or_default();
    o.push_str(&format!(
        "  <DiskSection>\n    <Info>Virtual disk information (thin: the data partition grows to fill the disk at boot)</Info>\n    <Disk ovf:capacity=\"{}\" \
         ovf:capacityAllocationUnits=\"byte\" ovf:diskId=\"vmdisk1\" ovf:fileRef=\"file1\" \
         ovf:format=\"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized\"{populated}/>\n  </DiskSection>\n",
        spec.capacity
    ));
    o.push_str(
        "  <NetworkSection>\n    <Info>The logical networks</Info>\n    <Network ovf:name=\"VM Network\">\n      \
         <Description>The network the appliance and its setup page are reached on</Description>\n    </Network>\n  \
         </NetworkSection>\n",
    );
    o.push_str(&format!(
        "  <VirtualSystem ovf:id=\"{n}\">\n    <Info>Godwit migration appliance</Info>\n    <Name>{n}</Name>\n",
        n = e(&spec.name)
    ));
    o.push_str(
        "    <OperatingSystemSection ovf:id=\"101\" vmw:osType=\"other3xLinux64Guest\">\n      \
         <Info>The guest operating system</Info>\n      <Description>Linux (Debian kernel)</Description>\n    \
         </OperatingSystemSection>\n",
    );
    o.push_str("    <VirtualHardwareSection ovf:transport=\"iso\">\n      <Info>Virtual hardware requirements</Info>\n");
    o.push_str(&format!(
        "      <System>\n        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n        \
         <vssd:InstanceID>0</vssd:InstanceID>\n        <vssd:VirtualSystemIdentifier>{}</vssd:VirtualSystemIdentifier>\n        \
         <vssd:VirtualSystemType>{}</vssd:VirtualSystemType>\n      </System>\n",
        e(&spec.name),
        e(&spec.hardware_version)
    ));
    item(
        &mut o,
        &[
            ("AllocationUnits", "hertz * 10^6".into()),
            ("Description", "Number of virtual CPUs".into()),
            ("ElementName", format!("{} virtual CPU(s)", spec.cpus)),
            ("InstanceID", "1".into()),
            ("ResourceType", "3".into()),
            ("VirtualQuantity", spec.cpus.to_string()),
        ],
    );
    item(
        &mut o,
        &[
            ("AllocationUnits", "byte * 2^20".into()),
            ("Description", "Memory size".into()),
            ("ElementName", format!("{}MB of memory", spec.memory_mib)),
            ("InstanceID", "2".into()),
            ("ResourceType", "4".into()),
            ("VirtualQuantity", spec.memory_mib.to_string()),
        ],
    );
    item(
        &mut o,
        &[
            ("Address", "0".into()),
            ("Description", "SCSI Controller".into()),
            ("ElementName", "SCSI controller 0".into()),
            ("InstanceID", "3".into()),
            ("ResourceSubType", "VirtualSCSI".into()),
            ("ResourceType", "6".into()),
        ],
    );
    item(
        &mut o,
        &[
            ("Address", "0".into()),
            ("Description", "IDE Controller".into()),
            ("ElementName", "IDE controller 0".into()),
            ("InstanceID", "4".into()),
            ("ResourceType", "5".into()),
        ],
    );
    item(
        &mut o,
        &[
            ("AddressOnParent", "0".into()),
            ("ElementName", "Hard disk 1".into()),
            ("HostResource", "ovf:/disk/vmdisk1".into()),
            ("InstanceID", "5".into()),
            ("Parent", "3".into()),
            ("ResourceType", "17".into()),
        ],
    );
    item(
        &mut o,
        &[
            ("AddressOnParent", "0".into()),
            ("AutomaticAllocation", "false".into()),
            ("Description", "CD-ROM for the OVF environment".into()),
            ("ElementName", "CD/DVD drive 1".into()),
            ("InstanceID", "6".into()),
            ("Parent", "4".into()),
            ("ResourceType", "15".into()),
        ],
    );
    item(
        &mut o,
        &[
            ("AddressOnParent", "7".into()),
            ("AutomaticAllocation", "true".into()),
            ("Connection", "VM Network".into()),
            (
                "Description",
                "VmxNet3 ethernet adapter on \"VM Network\"".into(),
            ),
            ("ElementName", "Network adapter 1".into()),
            ("InstanceID", "7".into()),
            ("ResourceSubType", "VmxNet3".into()),
            ("ResourceType", "10".into()),
        ],
    );
    item(
        &mut o,
        &[
            ("AutomaticAllocation", "false".into()),
            ("ElementName", "Video card".into()),
            ("InstanceID", "8".into()),
            ("ResourceType", "24".into()),
        ],
    );
    if spec.firmware != Firmware::Bios {
        o.push_str(
            "      <vmw:Config ovf:required=\"false\" vmw:key=\"firmware\" vmw:value=\"efi\"/>\n",
        );
    }
    if spec.firmware == Firmware::EfiSecureBoot {
        o.push_str("      <vmw:Config ovf:required=\"false\" vmw:key=\"bootOptions.efiSecureBootEnabled\" vmw:value=\"true\"/>\n");
    }
    o.push_str("    </VirtualHardwareSection>\n");
    o.push_str(&format!(
        "    <ProductSection ovf:required=\"false\">\n      <Info>Appliance settings, applied at first boot</Info>\n      \
         <Product>Godwit</Product>\n      <Vendor>Godwit</Vendor>\n      <Version>{v}</Version>\n      \
         <FullVersion>{v}</FullVersion>\n      <Category>Network</Category>\n",
        v = e(&spec.version)
    ));
    for p in PROPERTIES {
        let mut attrs = format!(
            "ovf:key=\"{}\" ovf:type=\"{}\" ovf:userConfigurable=\"true\" ovf:value=\"{}\"",
            e(p.key),
            p.ovf_type,
            e(p.default)
        );
        if !p.qualifiers.is_empty() {
            attrs.push_str(&format!(" ovf:qualifiers=\"{}\"", e(p.qualifiers)));
        }
        if p.password {
            attrs.push_str(" ovf:password=\"true\"");
        }
        o.push_str(&format!(
            "      <Property {attrs}>\n        <Label>{}</Label>\n        <Description>{}</Description>\n      </Property>\n",
            e(p.label),
            e(p.description)
        ));
    }
    o.push_str("    </ProductSection>\n  </VirtualSystem>\n</Envelope>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use quick_xml::events::Event;

    type Parsed = (Vec<String>, Vec<(String, String, String)>, Vec<String>);

    /// Element local names and `(element, attribute local name, value)` triples, via quick-xml.
    fn parse(doc: &str) -> Parsed {
        let mut r = quick_xml::Reader::from_str(doc);
        let (mut els, mut attrs, mut texts) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            match r.read_event().expect("well-formed") {
                Event::Start(e) | Event::Empty(e) => {
                    let n = e.local_name().as_ref().to_string();
                    for a in e.attributes() {
                        let a = a.unwrap();
                        attrs.push((
                            n.clone(),
                            a.key.local_name().as_ref().to_string(),
                            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .unwrap()
                                .into_owned(),
                        ));
                    }
                    els.push(n);
                }
                Event::Text(t) => texts.push(
                    quick_xml::escape::unescape(&t.xml_content(quick_xml::XmlVersion::Implicit1_0))
                        .unwrap()
                        .into_owned(),
                ),
                Event::Eof => break,
                _ => {}
            }
        }
        (els, attrs, texts)
    }

    #[test]
    fn descriptor_is_well_formed_and_complete() {
        let mut spec = Spec::new("1.2.3 <dev>", "godwit-disk1.vmdk", 12345, 142_606_336);
        spec.firmware = Firmware::EfiSecureBoot;
        spec.populated = Some(40 << 20);
        let d = descriptor(&spec);
        let (els, attrs, texts) = parse(&d);
        assert_eq!(els.iter().filter(|e| *e == "Item").count(), 8);
        assert_eq!(
            els.iter().filter(|e| *e == "Property").count(),
            PROPERTIES.len()
        );
        let has =
            |el: &str, a: &str, v: &str| attrs.iter().any(|(e, k, x)| e == el && k == a && x == v);
        assert!(has("File", "size", "12345"));
        assert!(has("Disk", "capacity", "142606336"));
        assert!(has("Disk", "populatedSize", "41943040"));
        assert!(has("Property", "password", "true"));
        assert!(has("Property", "key", crate::vapp::ADMIN_PASSWORD));
        assert!(has("Config", "value", "efi"));
        assert!(texts.iter().any(|t| t == "VirtualSCSI"));
        assert!(texts.iter().any(|t| t == "VmxNet3"));
        assert!(d.contains("<Version>1.2.3 &lt;dev&gt;</Version>"));
        let bios = descriptor(&Spec::new("1", "d.vmdk", 1, 2));
        assert!(!bios.contains("firmware"));
    }
}
