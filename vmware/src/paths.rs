//! Inventory paths: the names of an entity's ancestors below the root folder, joined by `/`
//! (`F0/DC1`, `DC0/vm/Finance`). `/folder` URLs name a datacenter by this path ("dcPath –
//! Inventory path to a datacenter ... located in the folder NorthAmerica which is located in the
//! root folder, the dcPath value is NorthAmerica/YourDatacenter", Web Services SDK Programming
//! Guide, Datastore Access (/folder),
//! <https://vdc-download.vmware.com/vmwb-repository/dcr-public/5c1c7b8c-0d1b-4037-af84-5f43787eb378/fab98b61-56a7-4608-992f-818d3b40e4ae/GUID-5A1B6F74-ABDA-4203-85D9-1728AA6764D7.html>),
//! and an ambiguous VM name is explained by the folders of its candidates. govmomi builds the
//! same path from the ancestors (`find/finder.go`, `datacenterPath`). Entity names arrive with
//! `/`, `\` and `%` already escaped by vCenter (`%2f`, `%5c`, `%25`), so joining is safe.

use crate::error::Result;
use crate::moref::MoRef;
use crate::session::Session;
use crate::soap::response::{ObjectContent, moref};
use std::collections::HashMap;

/// Name and parent of every folder, datacenter and vApp.
#[derive(Clone, Debug, Default)]
pub struct InventoryTree {
    nodes: HashMap<MoRef, (String, Option<MoRef>)>,
}

/// Most ancestors followed (vCenter nests folders far less deep).
const MAX_DEPTH: usize = 128;

impl InventoryTree {
    /// Read the folders, datacenters and vApps of the session's inventory.
    pub fn load(s: &Session) -> Result<Self> {
        let mut objs = s.all_of_kind("Folder", &["name", "parent"])?;
        objs.extend(s.all_of_kind("Datacenter", &["name", "parent"])?);
        // A VM in a vApp has the vApp as its parent (VirtualApp is a ResourcePool).
        objs.extend(
            s.all_of_kind("VirtualApp", &["name", "parent"])
                .unwrap_or_default(),
        );
        let mut tree = Self::from_objects(&objs);
        // A container view does not list its container: the root folder is added here.
        let root = s.service_content().root_folder.clone();
        tree.nodes
            .entry(root)
            .or_insert_with(|| ("Datacenters".to_string(), None));
        Ok(tree)
    }

    /// Pure: from RetrievePropertiesEx objects with `name` and `parent`.
    pub fn from_objects(objs: &[ObjectContent]) -> Self {
        let nodes = objs
            .iter()
            .map(|o| {
                let name = o
                    .prop("name")
                    .map(|n| n.text.trim().to_string())
                    .unwrap_or_else(|| o.obj.value.clone());
                let parent = o.prop("parent").and_then(|p| moref(p).ok());
                (o.obj.clone(), (name, parent))
            })
            .collect();
        InventoryTree { nodes }
    }

    /// The inventory path of `entity` (a folder, datacenter or vApp), without the root folder.
    /// `None` when an ancestor is unknown or the chain loops.
    pub fn path(&self, entity: &MoRef) -> Option<String> {
        let mut names = Vec::new();
        let mut cur = entity.clone();
        for _ in 0..MAX_DEPTH {
            let (name, parent) = self.nodes.get(&cur)?;
            match parent {
                None => {
                    names.reverse();
                    return Some(names.join("/"));
                }
                Some(p) => {
                    names.push(name.clone());
                    cur = p.clone();
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::xml::Element;

    fn obj(kind: &str, id: &str, name: &str, parent: Option<(&str, &str)>) -> ObjectContent {
        let mut props = vec![(
            "name".to_string(),
            Element {
                name: "val".into(),
                text: name.into(),
                ..Element::default()
            },
        )];
        if let Some((k, v)) = parent {
            props.push((
                "parent".to_string(),
                Element {
                    name: "val".into(),
                    type_attr: Some(k.into()),
                    text: v.into(),
                    ..Element::default()
                },
            ));
        }
        ObjectContent {
            obj: MoRef::new(kind, id),
            props,
            missing: Vec::new(),
        }
    }

    #[test]
    fn paths_of_nested_datacenters_and_folders() {
        let t = InventoryTree::from_objects(&[
            obj("Folder", "group-d1", "Datacenters", None),
            obj("Folder", "group-1", "F0", Some(("Folder", "group-d1"))),
            obj("Datacenter", "dc-2", "DC1", Some(("Folder", "group-1"))),
            obj("Datacenter", "dc-1", "DC0", Some(("Folder", "group-d1"))),
            obj("Folder", "group-v3", "vm", Some(("Datacenter", "dc-1"))),
            obj(
                "Folder",
                "group-9",
                "Fin%2fance",
                Some(("Folder", "group-v3")),
            ),
            obj("Folder", "loop-a", "a", Some(("Folder", "loop-b"))),
            obj("Folder", "loop-b", "b", Some(("Folder", "loop-a"))),
        ]);
        let p = |k: &str, v: &str| t.path(&MoRef::new(k, v));
        assert_eq!(p("Datacenter", "dc-2").as_deref(), Some("F0/DC1"));
        assert_eq!(p("Datacenter", "dc-1").as_deref(), Some("DC0"));
        assert_eq!(p("Folder", "group-9").as_deref(), Some("DC0/vm/Fin%2fance"));
        assert_eq!(p("Folder", "group-d1").as_deref(), Some(""));
        assert_eq!(p("Folder", "nope"), None);
        assert_eq!(p("Folder", "loop-a"), None);
    }
}
