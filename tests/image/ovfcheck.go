// ovfcheck: parses an OVF descriptor with govmomi's ovf package (as vSphere clients do) and
// prints what it found, one key=value per line, for tests/tests/image_appliance.rs.
package main

import (
	"fmt"
	"os"

	"github.com/vmware/govmomi/ovf"
)

func main() {
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	e, err := ovf.Unmarshal(f)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	for _, r := range e.References {
		fmt.Printf("file=%s size=%d\n", r.Href, r.Size)
	}
	if e.Disk != nil {
		for _, d := range e.Disk.Disks {
			populated := -1
			if d.PopulatedSize != nil {
				populated = *d.PopulatedSize
			}
			fmt.Printf("disk=%s capacity=%s populated=%d\n", d.DiskID, d.Capacity, populated)
		}
	}
	vs := e.VirtualSystem
	if vs == nil {
		fmt.Println("error: no VirtualSystem")
		os.Exit(1)
	}
	for _, hw := range vs.VirtualHardware {
		if hw.Transport != nil {
			fmt.Printf("transport=%s\n", *hw.Transport)
		}
		if hw.System != nil && hw.System.VirtualSystemType != nil {
			fmt.Printf("vsystype=%s\n", *hw.System.VirtualSystemType)
		}
		for _, it := range hw.Item {
			sub := ""
			if it.ResourceSubType != nil {
				sub = *it.ResourceSubType
			}
			rt := uint16(0)
			if it.ResourceType != nil {
				rt = *it.ResourceType
			}
			q := uint(0)
			if it.VirtualQuantity != nil {
				q = *it.VirtualQuantity
			}
			fmt.Printf("item type=%d subtype=%s quantity=%d\n", rt, sub, q)
		}
	}
	for _, p := range vs.Product {
		for _, pr := range p.Property {
			pw := pr.Password != nil && *pr.Password
			fmt.Printf("property=%s type=%s password=%t\n", pr.Key, pr.Type, pw)
		}
	}
}
