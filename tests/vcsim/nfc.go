// STUB (not vcsim; written by us after the published vSphere API): ExportVm / ExportSnapshot
// and the download side of HttpNfcLease, which vcsim 0.24.2 lacks (it has leases only for
// ImportVApp uploads). The lease is a real managed object in vcsim's registry, so its
// properties (state, info, error, initializeProgress, transferProgress) come from vcsim's own
// PropertyCollector and HttpNfcLeaseProgress/Complete/Abort go through vcsim's own dispatch.
//
//   - ExportVm (VM must not be powered on: InvalidPowerState, as on real hosts) and
//     ExportSnapshot (running VMs; the disks as of the snapshot) return an HttpNfcLease in
//     state "initializing". Each disk is converted to a streamOptimized VMDK with qemu-img (what
//     a real host streams), then the lease turns "ready" with one deviceUrl per disk:
//     https://<host>/nfc/<lease>/disk-<n>.vmdk, disk=true, targetId disk-<n>.vmdk and the key
//     vCenter gives, /<vm>/<controller class><bus number>:<unit number> (e.g.
//     /vm-70/VirtualLsiLogicController0:0: the format pyvmomi exporters parse, and Forklift's
//     table of device IDs per bus), plus an nvram entry with disk=false. POST
//     /stub/nfc?order=reverse lists the disks in the reverse of the VM's device order (nothing
//     promises the order: HttpNfcLeaseDeviceUrl "provides a mapping from logical device IDs to
//     URLs"). <host> is "*" in ESX mode (clients substitute the host they connected to) and the
//     simulator's address otherwise, or what POST /stub/nfc?host= says (a second host name to
//     pin, standing in for an ESXi host behind vCenter). sslThumbprint is the SHA-1 thumbprint of
//     the certificate that host serves, as vCenter reports it ("SSL thumbprint for the host the
//     URL refers to"); /stub/nfc?thumbprint=none|wrong|real reports none or a wrong one.
//   - Downloads from the simulator's own address need a live session cookie (401 otherwise,
//     see auth.go); other host names are authorised by the lease URL alone.
//   - The lease expires (state error, files gone) when no HttpNfcLeaseProgress arrives within
//     leaseTimeout seconds (POST /stub/nfc?timeout=S, default 300).
//   - GET /nfc/<lease>/<file> streams the file (no Range, Content-Type
//     application/x-vnd.vmware-streamVmdk) only while the lease is ready; ?rate=B/s throttles,
//     ?fail_after=N cuts the connection after N bytes (set with POST /stub/nfc).
//   - Complete and Abort end the lease and delete its files. GET /stub/nfc-stats lists every
//     lease: state, completed, aborted, expired, progress calls, bytes served, cookie seen.
package main

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

type nfcConfig struct {
	Timeout   int32  // lease timeout, seconds
	Rate      int64  // bytes per second served, 0 = unthrottled
	FailAfter int64  // cut the download after this many bytes, 0 = never
	Host      string // deviceUrl host[:port] override
	Order     string // "reverse": disks listed in reverse device order
	Thumb     string // "real" (default), "none" or "wrong"
}

type leaseStats struct {
	ID            string `json:"id"`
	Method        string `json:"method"`
	Entity        string `json:"entity"`
	State         string `json:"state"`
	Completed     bool   `json:"completed"`
	Aborted       bool   `json:"aborted"`
	Expired       bool   `json:"expired"`
	ProgressCalls int    `json:"progress_calls"`
	LastPercent   int32  `json:"last_percent"`
	BytesServed   int64  `json:"bytes_served"`
	CookieSeen    bool   `json:"cookie_seen"`
	Unauthorized  int    `json:"unauthorized"`
	CompletedAt   int64  `json:"completed_at_ms"`
}

type exportLease struct {
	mo.HttpNfcLease
	mu           sync.Mutex
	dir          string
	files        map[string]string
	lastProgress time.Time
	stats        leaseStats
}

var (
	nfcMu      sync.Mutex
	nfcCfg     = nfcConfig{Timeout: 300}
	nfcLeases  = map[string]*exportLease{}
	nfcCounter int64
	nfcDefault string // the simulator's host:port, or "*" in ESX mode
	ownHost    string // the simulator's host:port
	certSHA1   string // SHA-1 thumbprint of the simulator's certificate, colon hex
)

func (l *exportLease) setState(state types.HttpNfcLeaseState, fault string) {
	simulator.Map.WithLock(l, func() {
		l.State = state
		if fault != "" {
			l.Error = &types.LocalizedMethodFault{
				Fault:            &types.SystemError{Reason: fault},
				LocalizedMessage: fault,
			}
		}
	})
	l.mu.Lock()
	l.stats.State = string(state)
	l.mu.Unlock()
}

func (l *exportLease) state() types.HttpNfcLeaseState {
	var s types.HttpNfcLeaseState
	simulator.Map.WithLock(l, func() { s = l.State })
	return s
}

func (l *exportLease) removeFiles() {
	_ = os.RemoveAll(l.dir)
}

func invalidState(msg string) *soap.Fault {
	return simulator.Fault(msg, &types.InvalidState{})
}

// HttpNfcLeaseProgress: the keep-alive. Resets the expiry clock.
func (l *exportLease) HttpNfcLeaseProgress(req *types.HttpNfcLeaseProgress) soap.HasFault {
	body := &methods.HttpNfcLeaseProgressBody{}
	if l.State != types.HttpNfcLeaseStateReady {
		body.Fault_ = invalidState("stub: lease is " + string(l.State))
		return body
	}
	l.TransferProgress = req.Percent
	l.mu.Lock()
	l.lastProgress = time.Now()
	l.stats.ProgressCalls++
	l.stats.LastPercent = req.Percent
	l.mu.Unlock()
	body.Res = new(types.HttpNfcLeaseProgressResponse)
	return body
}

func (l *exportLease) HttpNfcLeaseComplete(req *types.HttpNfcLeaseComplete) soap.HasFault {
	body := &methods.HttpNfcLeaseCompleteBody{}
	if l.State != types.HttpNfcLeaseStateReady {
		body.Fault_ = invalidState("stub: lease is " + string(l.State))
		return body
	}
	l.State = types.HttpNfcLeaseStateDone
	l.mu.Lock()
	l.stats.State = string(l.State)
	l.stats.Completed = true
	l.stats.CompletedAt = time.Now().UnixNano() / 1e6
	l.mu.Unlock()
	l.removeFiles()
	body.Res = new(types.HttpNfcLeaseCompleteResponse)
	return body
}

func (l *exportLease) HttpNfcLeaseAbort(req *types.HttpNfcLeaseAbort) soap.HasFault {
	body := &methods.HttpNfcLeaseAbortBody{}
	if l.State == types.HttpNfcLeaseStateDone {
		body.Fault_ = invalidState("stub: lease is done")
		return body
	}
	l.State = types.HttpNfcLeaseStateError
	l.Error = &types.LocalizedMethodFault{Fault: &types.RequestCanceled{}, LocalizedMessage: "aborted by the client"}
	l.mu.Lock()
	l.stats.State = string(l.State)
	l.stats.Aborted = true
	l.mu.Unlock()
	l.removeFiles()
	body.Res = new(types.HttpNfcLeaseAbortResponse)
	return body
}

type exportReq struct {
	Vm   string `xml:"Body>ExportVm>_this"`
	Snap string `xml:"Body>ExportSnapshot>_this"`
}

type exportDisk struct {
	descriptor string
	capacityKB int64
	key        string // /<vm>/<controller class><bus>:<unit>
}

// controllerName: the vim class name of a controller device (VirtualLsiLogicController,
// ParaVirtualSCSIController, VirtualIDEController, ...).
func controllerName(d types.BaseVirtualDevice) string {
	return reflect.TypeOf(d).Elem().Name()
}

// The file-backed disks of a device list, as local paths in vcsim's datastore directories,
// with the device key vCenter gives each in an export lease.
func exportDisks(vmID string, devices []types.BaseVirtualDevice) ([]exportDisk, string) {
	var out []exportDisk
	for _, d := range devices {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok {
			return nil, "stub: a disk has no file backing"
		}
		path := localPath(b.GetVirtualDeviceFileBackingInfo())
		if path == "" {
			return nil, "stub: no datastore for " + b.GetVirtualDeviceFileBackingInfo().FileName
		}
		key := ""
		for _, c := range devices {
			if c.GetVirtualDevice().Key == disk.ControllerKey {
				if vc, ok := c.(types.BaseVirtualController); ok && disk.UnitNumber != nil {
					key = fmt.Sprintf("/%s/%s%d:%d", vmID, controllerName(c), vc.GetVirtualController().BusNumber, *disk.UnitNumber)
				}
			}
		}
		if key == "" {
			return nil, "stub: a disk has no controller"
		}
		out = append(out, exportDisk{path, disk.CapacityInKB, key})
	}
	return out, ""
}

// STUB: ExportVm / ExportSnapshot on POST /sdk.
func serveExport(w http.ResponseWriter, r *http.Request, body []byte) {
	if !requestSessionLive(r) {
		soapFault(w, "NotAuthenticated", "stub: no session")
		return
	}
	if denied("VApp.Export") {
		noPermission(w, "VApp.Export")
		return
	}
	var q exportReq
	if err := xml.Unmarshal(body, &q); err != nil {
		soapFault(w, "InvalidRequest", "stub: cannot parse the export request")
		return
	}
	method := "ExportVm"
	var devices []types.BaseVirtualDevice
	var entity types.ManagedObjectReference
	if id := strings.TrimSpace(q.Snap); id != "" {
		method = "ExportSnapshot"
		snap, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: id}).(*simulator.VirtualMachineSnapshot)
		if !ok {
			soapFault(w, "ManagedObjectNotFound", "stub: no snapshot "+id)
			return
		}
		simulator.Map.WithLock(snap, func() {
			devices = snap.Config.Hardware.Device
			entity = snap.Vm
		})
	} else {
		id := strings.TrimSpace(q.Vm)
		vm, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: id}).(*simulator.VirtualMachine)
		if !ok {
			soapFault(w, "ManagedObjectNotFound", "stub: no VM "+id)
			return
		}
		var power types.VirtualMachinePowerState
		simulator.Map.WithLock(vm, func() {
			devices = vm.Config.Hardware.Device
			entity = vm.Self
			power = vm.Runtime.PowerState
		})
		if power == types.VirtualMachinePowerStatePoweredOn {
			soapFault(w, "InvalidPowerState", "stub: ExportVm needs the VM powered off (use ExportSnapshot)")
			return
		}
	}
	disks, bad := exportDisks(entity.Value, devices)
	if bad != "" {
		soapFault(w, "FileFault", bad)
		return
	}
	nfcMu.Lock()
	cfg := nfcCfg
	nfcMu.Unlock()
	id := fmt.Sprintf("lease-godwit-%d", atomic.AddInt64(&nfcCounter, 1))
	ref := types.ManagedObjectReference{Type: "HttpNfcLease", Value: id}
	dir, err := os.MkdirTemp("", id+"-")
	if err != nil {
		soapFault(w, "FileFault", "stub: "+err.Error())
		return
	}
	lease := &exportLease{
		HttpNfcLease: mo.HttpNfcLease{Self: ref, State: types.HttpNfcLeaseStateInitializing, Mode: "pull"},
		dir:          dir,
		files:        map[string]string{},
		stats:        leaseStats{ID: id, Method: method, Entity: entity.Value, State: "initializing"},
	}
	simulator.Map.Put(lease)
	nfcMu.Lock()
	nfcLeases[id] = lease
	nfcMu.Unlock()
	go prepareLease(lease, entity, disks, cfg)
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><%sResponse xmlns="urn:vim25"><returnval type="HttpNfcLease">%s</returnval></%sResponse></soapenv:Body></soapenv:Envelope>`, method, id, method)
}

// Convert every disk to streamOptimized (what a host streams), then make the lease ready.
func prepareLease(l *exportLease, entity types.ManagedObjectReference, disks []exportDisk, cfg nfcConfig) {
	host := cfg.Host
	if host == "" {
		host = nfcDefault
	}
	var urls []types.HttpNfcLeaseDeviceUrl
	var total int64
	thumb := certSHA1
	switch cfg.Thumb {
	case "none":
		thumb = ""
	case "wrong":
		thumb = strings.Repeat("AB:", 19) + "AB"
	}
	for i, d := range disks {
		name := fmt.Sprintf("disk-%d.vmdk", i)
		out := filepath.Join(l.dir, name)
		cmd := exec.Command("qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", d.descriptor, out)
		if msg, err := cmd.CombinedOutput(); err != nil {
			l.setState(types.HttpNfcLeaseStateError, fmt.Sprintf("stub: converting %s: %v: %s", d.descriptor, err, msg))
			return
		}
		st, err := os.Stat(out)
		if err != nil {
			l.setState(types.HttpNfcLeaseStateError, "stub: "+err.Error())
			return
		}
		l.files[name] = out
		total += d.capacityKB
		urls = append(urls, types.HttpNfcLeaseDeviceUrl{
			Key:           d.key,
			Url:           fmt.Sprintf("https://%s/nfc/%s/%s", host, l.Self.Value, name),
			SslThumbprint: thumb,
			Disk:          types.NewBool(true),
			TargetId:      name,
			FileSize:      st.Size(),
		})
		simulator.Map.WithLock(l, func() { l.InitializeProgress = int32((i + 1) * 100 / len(disks)) })
	}
	if cfg.Order == "reverse" {
		for i, j := 0, len(urls)-1; i < j; i, j = i+1, j-1 {
			urls[i], urls[j] = urls[j], urls[i]
		}
	}
	// A real export lists the VM's other files too (nvram, disk=false); clients skip them.
	nvram := filepath.Join(l.dir, "nvram")
	if err := os.WriteFile(nvram, []byte("stub nvram"), 0o600); err == nil {
		l.files["nvram"] = nvram
		urls = append(urls, types.HttpNfcLeaseDeviceUrl{
			Key:           fmt.Sprintf("/%s/nvram", entity.Value),
			Url:           fmt.Sprintf("https://%s/nfc/%s/nvram", host, l.Self.Value),
			SslThumbprint: thumb,
			Disk:          types.NewBool(false),
			TargetId:      "nvram",
		})
	}
	simulator.Map.WithLock(l, func() {
		l.Info = &types.HttpNfcLeaseInfo{
			Lease:                 l.Self,
			Entity:                entity,
			DeviceUrl:             urls,
			TotalDiskCapacityInKB: total,
			LeaseTimeout:          cfg.Timeout,
		}
	})
	l.mu.Lock()
	l.lastProgress = time.Now()
	l.mu.Unlock()
	l.setState(types.HttpNfcLeaseStateReady, "")
	// Expire the lease when the client stops sending HttpNfcLeaseProgress.
	for {
		time.Sleep(100 * time.Millisecond)
		if l.state() != types.HttpNfcLeaseStateReady {
			return
		}
		l.mu.Lock()
		idle := time.Since(l.lastProgress)
		l.mu.Unlock()
		if idle > time.Duration(cfg.Timeout)*time.Second {
			l.mu.Lock()
			l.stats.Expired = true
			l.mu.Unlock()
			l.setState(types.HttpNfcLeaseStateError, "stub: lease timed out (no HttpNfcLeaseProgress)")
			l.removeFiles()
			return
		}
	}
}

// STUB: GET /nfc/<lease>/<file>.
func serveNfcDownload(w http.ResponseWriter, r *http.Request) {
	p := strings.Split(strings.TrimPrefix(r.URL.Path, "/nfc/"), "/")
	if len(p) != 2 || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	nfcMu.Lock()
	l := nfcLeases[p[0]]
	cfg := nfcCfg
	nfcMu.Unlock()
	if l == nil || l.state() != types.HttpNfcLeaseStateReady {
		http.Error(w, "stub: no ready lease "+p[0], http.StatusNotFound)
		return
	}
	path, ok := l.files[p[1]]
	if !ok {
		http.NotFound(w, r)
		return
	}
	if _, err := r.Cookie("vmware_soap_session"); err == nil {
		l.mu.Lock()
		l.stats.CookieSeen = true
		l.mu.Unlock()
	}
	if r.Host == ownHost && !requestSessionLive(r) {
		l.mu.Lock()
		l.stats.Unauthorized++
		l.mu.Unlock()
		http.Error(w, "stub: no live vmware_soap_session", http.StatusUnauthorized)
		return
	}
	f, err := os.Open(path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	defer f.Close()
	st, _ := f.Stat()
	w.Header().Set("Content-Type", "application/x-vnd.vmware-streamVmdk")
	w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
	buf := make([]byte, 64*1024)
	var sent int64
	start := time.Now()
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if cfg.FailAfter > 0 && sent+int64(n) > cfg.FailAfter {
				n = int(cfg.FailAfter - sent)
				_, _ = w.Write(buf[:n])
				l.mu.Lock()
				l.stats.BytesServed += int64(n)
				l.mu.Unlock()
				panic(http.ErrAbortHandler) // cut the connection mid-body
			}
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			sent += int64(n)
			l.mu.Lock()
			l.stats.BytesServed += int64(n)
			l.mu.Unlock()
			if cfg.Rate > 0 {
				due := time.Duration(float64(sent) / float64(cfg.Rate) * float64(time.Second))
				if d := due - time.Since(start); d > 0 {
					time.Sleep(d)
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// STUB controls: POST /stub/nfc?timeout=S&rate=B&fail_after=N&host=H (missing = unchanged;
// reset=1 first restores the defaults), GET /stub/nfc-stats.
func serveNfcStub(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/stub/nfc-stats" {
		nfcMu.Lock()
		var all []leaseStats
		for i := int64(1); i <= atomic.LoadInt64(&nfcCounter); i++ {
			if l := nfcLeases[fmt.Sprintf("lease-godwit-%d", i)]; l != nil {
				l.mu.Lock()
				all = append(all, l.stats)
				l.mu.Unlock()
			}
		}
		nfcMu.Unlock()
		if all == nil {
			all = []leaseStats{}
		}
		_ = json.NewEncoder(w).Encode(all)
		return
	}
	q := r.URL.Query()
	nfcMu.Lock()
	defer nfcMu.Unlock()
	if q.Get("reset") != "" {
		nfcCfg = nfcConfig{Timeout: 300}
	}
	if v := q.Get("timeout"); v != "" {
		n, _ := strconv.ParseInt(v, 10, 32)
		nfcCfg.Timeout = int32(n)
	}
	if v := q.Get("rate"); v != "" {
		nfcCfg.Rate, _ = strconv.ParseInt(v, 10, 64)
	}
	if v := q.Get("fail_after"); v != "" {
		nfcCfg.FailAfter, _ = strconv.ParseInt(v, 10, 64)
	}
	if v, ok := q["host"]; ok {
		nfcCfg.Host = v[0]
	}
	if v, ok := q["order"]; ok {
		nfcCfg.Order = v[0]
	}
	if v, ok := q["thumbprint"]; ok {
		nfcCfg.Thumb = v[0]
	}
}

// STUB: POST /stub/datastore-type?name=LocalDS_0&type=vsan sets summary.type, so a datastore
// looks like one /folder cannot serve (vSAN, vVol).
func setDatastoreType(w http.ResponseWriter, r *http.Request) {
	name, typ := r.URL.Query().Get("name"), r.URL.Query().Get("type")
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		if ds.Name == name {
			simulator.Map.WithLock(ds, func() { ds.Summary.Type = typ })
			return
		}
	}
	http.Error(w, "no such datastore", 404)
}
