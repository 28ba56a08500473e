// STUB (not vcsim; written by us after the published vSphere API): VM state vcsim 0.24.2 has
// fields for but never sets, and snapshot task behaviour it does not simulate.
//
//   - POST /stub/vm-state {"vm":"vm-57", "key_id":"k", "disk_key_ids":{"203":"k"},
//     "consolidation_needed":true, "ft_state":"running", "tools_running":true}: sets, in vcsim's
//     own objects (so its PropertyCollector serves them), config.keyId (an encrypted VM,
//     VirtualMachineConfigInfo.keyId), a disk backing's keyId (an encrypted disk,
//     VirtualDiskFlatVer2BackingInfo.keyId), runtime.consolidationNeeded,
//     runtime.faultToleranceState and guest.toolsRunningStatus. Missing fields are left alone.
//   - POST /stub/snapshot?quiesce_faults=N&delay_ms=M:
//     quiesce_faults: the next N CreateSnapshot_Task calls with quiesce=true return a task that
//     fails with ApplicationQuiesceFault (a SnapshotFault: "creating a quiesced snapshot failed",
//     https://developer.broadcom.com/xapis/vsphere-web-services-api/7.0u3/vim.fault.ApplicationQuiesceFault.html)
//     and create no snapshot. delay_ms: CreateSnapshot_Task answers with a task that stays
//     queued for M ms, then creates the snapshot through vcsim's own CreateSnapshot_Task (vcsim
//     runs tasks synchronously; a real snapshot of a busy VM can take minutes).
package main

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

var (
	quiesceFaults   int64
	snapshotDelayMs int64
	snapshotStubMu  sync.Mutex
)

type vmState struct {
	VM                  string            `json:"vm"`
	KeyID               *string           `json:"key_id"`
	DiskKeyIDs          map[string]string `json:"disk_key_ids"`
	ConsolidationNeeded *bool             `json:"consolidation_needed"`
	FtState             *string           `json:"ft_state"`
	ToolsRunning        *bool             `json:"tools_running"`
}

func cryptoKey(id string) *types.CryptoKeyId {
	if id == "" {
		return nil
	}
	return &types.CryptoKeyId{KeyId: id, ProviderId: &types.KeyProviderId{Id: "godwit-test-kms"}}
}

// STUB: POST /stub/vm-state.
func setVMState(w http.ResponseWriter, r *http.Request) {
	var s vmState
	if err := json.NewDecoder(r.Body).Decode(&s); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	vm, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: s.VM}).(*simulator.VirtualMachine)
	if !ok {
		http.Error(w, "no such vm", 404)
		return
	}
	missing := ""
	simulator.Map.WithLock(vm, func() {
		if s.KeyID != nil {
			vm.Config.KeyId = cryptoKey(*s.KeyID)
		}
		for k, id := range s.DiskKeyIDs {
			key, _ := strconv.Atoi(k)
			found := false
			for _, d := range vm.Config.Hardware.Device {
				if disk, ok := d.(*types.VirtualDisk); ok && disk.Key == int32(key) {
					if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
						b.KeyId, found = cryptoKey(id), true
					}
				}
			}
			if !found {
				missing = k
			}
		}
		if s.ConsolidationNeeded != nil {
			vm.Runtime.ConsolidationNeeded = types.NewBool(*s.ConsolidationNeeded)
		}
		if s.FtState != nil {
			vm.Runtime.FaultToleranceState = types.VirtualMachineFaultToleranceState(*s.FtState)
		}
		if s.ToolsRunning != nil && vm.Guest != nil {
			if *s.ToolsRunning {
				vm.Guest.ToolsRunningStatus = string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
			} else {
				vm.Guest.ToolsRunningStatus = string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)
			}
		}
	})
	if missing != "" {
		http.Error(w, "no flat disk with key "+missing, 404)
	}
}

// STUB controls: POST /stub/snapshot?quiesce_faults=N&delay_ms=M (missing = unchanged).
func setSnapshotStub(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if v := q.Get("quiesce_faults"); v != "" {
		n, _ := strconv.ParseInt(v, 10, 64)
		snapshotStubMu.Lock()
		quiesceFaults = n
		snapshotStubMu.Unlock()
	}
	if v := q.Get("delay_ms"); v != "" {
		n, _ := strconv.ParseInt(v, 10, 64)
		atomic.StoreInt64(&snapshotDelayMs, n)
	}
}

type createSnapshotReq struct {
	This    string `xml:"Body>CreateSnapshot_Task>_this"`
	Quiesce bool   `xml:"Body>CreateSnapshot_Task>quiesce"`
}

type taskReply struct {
	Returnval string `xml:"Body>CreateSnapshot_TaskResponse>returnval"`
}

func writeTaskReply(w http.ResponseWriter, task types.ManagedObjectReference) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	fmt.Fprintf(w, `%s<CreateSnapshot_TaskResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></CreateSnapshot_TaskResponse>%s`, envHead, task.Value, envTail)
}

// serveCreateSnapshot answers CreateSnapshot_Task when a stub behaviour applies; false means
// vcsim answers it.
func serveCreateSnapshot(w http.ResponseWriter, r *http.Request, body []byte) bool {
	if denied("VirtualMachine.State.CreateSnapshot") {
		noPermission(w, "VirtualMachine.State.CreateSnapshot")
		return true
	}
	var q createSnapshotReq
	if err := xml.Unmarshal(body, &q); err != nil {
		return false
	}
	vmRef := types.ManagedObjectReference{Type: "VirtualMachine", Value: strings.TrimSpace(q.This)}
	if _, ok := simulator.Map.Get(vmRef).(*simulator.VirtualMachine); !ok {
		return false
	}
	if q.Quiesce && takeQuiesceFault() {
		task := simulator.CreateTask(vmRef, "createSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
			return nil, &types.ApplicationQuiesceFault{}
		})
		task.Run()
		writeTaskReply(w, task.Self)
		return true
	}
	delay := atomic.LoadInt64(&snapshotDelayMs)
	if delay <= 0 {
		return false
	}
	cookie := ""
	if c, err := r.Cookie("vmware_soap_session"); err == nil {
		cookie = c.Value
	}
	inner := strings.TrimSpace(string(body))
	task := simulator.CreateTask(vmRef, "createSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		// The real work: vcsim's own CreateSnapshot_Task, through its own dispatch.
		rec := internalRaw(inner, cookie)
		var tr taskReply
		if err := xml.Unmarshal(rec.Body.Bytes(), &tr); err != nil || tr.Returnval == "" {
			return nil, &types.SystemError{Reason: "stub: vcsim refused the snapshot: " + rec.Body.String()}
		}
		t, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "Task", Value: strings.TrimSpace(tr.Returnval)}).(*simulator.Task)
		if !ok {
			return nil, &types.SystemError{Reason: "stub: vcsim task vanished"}
		}
		var res types.AnyType
		var fault types.BaseMethodFault
		simulator.Map.WithLock(t, func() {
			res = t.Info.Result
			if t.Info.Error != nil {
				fault = t.Info.Error.Fault
			}
		})
		return res, fault
	})
	go func() {
		time.Sleep(time.Duration(delay) * time.Millisecond)
		task.Run()
	}()
	writeTaskReply(w, task.Self)
	return true
}

func takeQuiesceFault() bool {
	snapshotStubMu.Lock()
	defer snapshotStubMu.Unlock()
	if quiesceFaults > 0 {
		quiesceFaults--
		return true
	}
	return false
}
