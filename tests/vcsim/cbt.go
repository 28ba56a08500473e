// STUB (not vcsim; written by us after the published vSphere API): QueryChangedDiskAreas,
// which vcsim 0.24.2 answers with MethodNotFound.
//
//   - Answers DiskChangeInfo (byte offsets) for the changeIds registered with POST /stub/cbt
//     {"chunk":N,"areas":{"<changeId>":[[start,len],...]},"overshoot":false}; each answer covers
//     at most `chunk` bytes from startOffset, so a client must loop over the capacity
//     ("Typically, callers will make multiple calls to this function, starting with
//     startOffset 0 and then examine the length property",
//     https://developer.broadcom.com/xapis/virtual-infrastructure-json-api/latest/sdk/vim25/release/VirtualMachine/moId/QueryChangedDiskAreas/post/).
//     An unknown changeId gets a FileFault (what a CBT reset leads to).
//   - changeId "*": the allocated areas of the disk as of the snapshot (what ESXi reports for
//     a thin disk on VMFS: "it also returns unallocated areas ... With thin-provisioned virtual
//     disk this could be a large amount of zero data" is the case *without* "*", VDDK guide,
//     https://docs.vmware.com/en/VMware-vSphere/8.0/vsphere-vddk-programming-guide/GUID-A2102D6D-63E2-4C20-A09B-8B23C4053C2F.html),
//     computed with `qemu-img map` of the disk's files in vcsim's datastore directory. Needs
//     CBT on for the VM (changes before CBT was enabled give a FileFault, VDDK guide
//     GUID-9992FD61-1D92-4CA2-937D-2DE47DDD27D2).
//   - "overshoot": true returns each registered area whole when it intersects the window,
//     not clipped to [startOffset, startOffset+chunk) (vCenter's answers vary; the client must
//     clamp).
//   - GET /stub/cbt-stats: {"calls":{"<changeId>":N}} (QueryChangedDiskAreas calls per changeId).
//   - POST /stub/changeid {"vm":"vm-57","key":203,"change_id":"x"} sets backing.changeId.
package main

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io/ioutil"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

type cbtState struct {
	Chunk     int64                 `json:"chunk"`
	Areas     map[string][][2]int64 `json:"areas"` // changeId -> [[start,len],...]
	Overshoot bool                  `json:"overshoot"`
}

var (
	stub     = cbtState{Chunk: 1 << 20, Areas: map[string][][2]int64{}}
	cbtCalls = map[string]int{}
)

type qcda struct {
	This        string `xml:"Body>QueryChangedDiskAreas>_this"`
	Snapshot    string `xml:"Body>QueryChangedDiskAreas>snapshot"`
	DeviceKey   int32  `xml:"Body>QueryChangedDiskAreas>deviceKey"`
	StartOffset int64  `xml:"Body>QueryChangedDiskAreas>startOffset"`
	ChangeID    string `xml:"Body>QueryChangedDiskAreas>changeId"`
}

// The disk with this key as of the snapshot (or the VM now), with its capacity, the local
// path of its descriptor and whether the VM has CBT on.
func qcdaDisk(q qcda) (capacity int64, descriptor string, cbtOn bool, ok bool) {
	vm, isVM := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: strings.TrimSpace(q.This)}).(*simulator.VirtualMachine)
	if !isVM {
		return 0, "", false, false
	}
	var devices []types.BaseVirtualDevice
	simulator.Map.WithLock(vm, func() {
		devices = vm.Config.Hardware.Device
		cbtOn = vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
	})
	if id := strings.TrimSpace(q.Snapshot); id != "" {
		if snap, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: id}).(*simulator.VirtualMachineSnapshot); ok {
			simulator.Map.WithLock(snap, func() { devices = snap.Config.Hardware.Device })
		}
	}
	for _, d := range devices {
		disk, isDisk := d.(*types.VirtualDisk)
		if !isDisk || disk.Key != q.DeviceKey {
			continue
		}
		capacity, ok = disk.CapacityInKB*1024, true
		if disk.CapacityInBytes > 0 {
			capacity = disk.CapacityInBytes
		}
		if b, isFile := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo); isFile {
			descriptor = localPath(b.GetVirtualDeviceFileBackingInfo())
		}
	}
	return
}

// localPath: a backing's file in vcsim's datastore directory, found by the backing's datastore
// MoRef (two datacenters may each have a datastore of the same name).
func localPath(b *types.VirtualDeviceFileBackingInfo) string {
	name := b.FileName
	if !strings.HasPrefix(name, "[") || !strings.Contains(name, "] ") {
		return ""
	}
	parts := strings.SplitN(name[1:], "] ", 2)
	if b.Datastore != nil {
		if ds, ok := simulator.Map.Get(*b.Datastore).(*simulator.Datastore); ok {
			return filepath.Join(ds.Info.GetDatastoreInfo().Url, parts[1])
		}
	}
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		if ds.Name == parts[0] {
			return filepath.Join(ds.Info.GetDatastoreInfo().Url, parts[1])
		}
	}
	return ""
}

type mapEntry struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Data   bool  `json:"data"`
}

// allocated: the data areas of a disk image, as qemu-img reads its allocation. A descriptor
// with one FLAT extent at offset 0 is mapped through that extent file (raw: its holes are
// the unallocated blocks of a thin disk, as on VMFS); anything else through the descriptor.
func allocated(descriptor string) ([][2]int64, error) {
	args := []string{"map", "--output=json", descriptor}
	if text, err := ioutil.ReadFile(descriptor); err == nil && len(text) < 64*1024 {
		var flat []string
		for _, line := range strings.Split(string(text), "\n") {
			f := strings.Fields(line)
			if len(f) >= 5 && f[0] == "RW" && f[2] == "FLAT" && f[4] == "0" {
				flat = append(flat, strings.Trim(f[3], `"`))
			}
		}
		if len(flat) == 1 {
			args = []string{"map", "--output=json", "-f", "raw", filepath.Join(filepath.Dir(descriptor), flat[0])}
		}
	}
	out, err := exec.Command("qemu-img", args...).Output()
	if err != nil {
		return nil, err
	}
	var entries []mapEntry
	if err := json.Unmarshal(out, &entries); err != nil {
		return nil, err
	}
	var areas [][2]int64
	for _, e := range entries {
		if e.Data && e.Length > 0 {
			areas = append(areas, [2]int64{e.Start, e.Length})
		}
	}
	return areas, nil
}

// STUB: QueryChangedDiskAreas after the published API (DiskChangeInfo, byte offsets).
func serveQCDA(w http.ResponseWriter, body []byte) {
	var q qcda
	if err := xml.Unmarshal(body, &q); err != nil {
		soapFault(w, "InvalidRequest", "stub: cannot parse QueryChangedDiskAreas")
		return
	}
	if denied("VirtualMachine.Provisioning.DiskRandomRead") {
		noPermission(w, "VirtualMachine.Provisioning.DiskRandomRead")
		return
	}
	capacity, descriptor, cbtOn, ok := qcdaDisk(q)
	if !ok {
		soapFault(w, "InvalidArgument", "stub: no disk with that deviceKey")
		return
	}
	stubMu.Lock()
	cbtCalls[q.ChangeID]++
	areas, known := stub.Areas[q.ChangeID]
	chunk, overshoot := stub.Chunk, stub.Overshoot
	stubMu.Unlock()
	if q.ChangeID == "*" && !known {
		if !cbtOn {
			soapFault(w, "FileFault", "stub: changed block tracking is not enabled for this virtual machine")
			return
		}
		a, err := allocated(descriptor)
		if err != nil {
			soapFault(w, "FileFault", fmt.Sprintf("stub: reading the allocation of %s: %v", descriptor, err))
			return
		}
		areas, known = a, true
	}
	if !known {
		soapFault(w, "FileFault", "stub: changeId "+q.ChangeID+" is not valid for this disk")
		return
	}
	if q.StartOffset < 0 || q.StartOffset >= capacity {
		soapFault(w, "InvalidArgument", "stub: startOffset beyond the disk capacity")
		return
	}
	end := q.StartOffset + chunk
	if end > capacity {
		end = capacity
	}
	var sb strings.Builder
	for _, a := range areas {
		s, e := a[0], a[0]+a[1]
		if e <= q.StartOffset || s >= end {
			continue
		}
		if !overshoot {
			if s < q.StartOffset {
				s = q.StartOffset
			}
			if e > end {
				e = end
			}
		}
		fmt.Fprintf(&sb, "<changedArea><start>%d</start><length>%d</length></changedArea>", s, e-s)
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>%d</startOffset><length>%d</length>%s</returnval></QueryChangedDiskAreasResponse></soapenv:Body></soapenv:Envelope>`, q.StartOffset, end-q.StartOffset, sb.String())
}

func setCBT(w http.ResponseWriter, r *http.Request) {
	var s cbtState
	if err := json.NewDecoder(r.Body).Decode(&s); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	if s.Chunk <= 0 {
		s.Chunk = 1 << 20
	}
	stubMu.Lock()
	stub = s
	stubMu.Unlock()
}

func cbtStats(w http.ResponseWriter) {
	stubMu.Lock()
	defer stubMu.Unlock()
	_ = json.NewEncoder(w).Encode(map[string]interface{}{"calls": cbtCalls})
}

func setChangeID(w http.ResponseWriter, r *http.Request) {
	var req struct {
		VM       string `json:"vm"`
		Key      int32  `json:"key"`
		ChangeID string `json:"change_id"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	obj := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: req.VM})
	vm, ok := obj.(*simulator.VirtualMachine)
	if !ok {
		http.Error(w, "no such vm", 404)
		return
	}
	done := false
	simulator.Map.WithLock(vm, func() {
		for _, d := range vm.Config.Hardware.Device {
			if disk, ok := d.(*types.VirtualDisk); ok && disk.Key == req.Key {
				if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
					b.ChangeId, done = req.ChangeID, true
				}
			}
		}
	})
	if !done {
		http.Error(w, "no flat disk with that key", 404)
	}
}
