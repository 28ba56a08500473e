// vcsim-godwit: govmomi's vCenter simulator (vcsim, Debian golang-github-vmware-govmomi-dev
// 0.24.2) for Godwit's tests, over TLS, plus a clearly labelled STUB layer for what vcsim
// lacks or forgives (main.go, auth.go, cbt.go, nfc.go, paging.go, vmstate.go). Build:
// tests/vcsim/build.sh. Output on stdout, one per line:
//
//	URL https://127.0.0.1:PORT/sdk
//	FINGERPRINT <sha256 hex of the certificate>
//	DATASTORE <name> <directory>
//	DSDC <datacenter inventory path> <datastore MoRef> <name> <directory>
//	READY
//
// It stops (removing its datastore directories) when stdin closes or on SIGINT/SIGTERM.
//
// vcsim's own behaviour used as is: -datacenters N / -folders N (Model.Datacenter /
// Model.Folder: datacenters nested in folders, where /folder's dcPath must be the datacenter's
// inventory path, e.g. F0/DC1; each datacenter has its own LocalDS_0), -session-idle-timeout
// (SessionIdleTimeout), TerminateSession, CreateFolder / MoveIntoFolder_Task / Rename_Task
// (duplicate VM names in different folders; vcsim refuses them within one folder, as vCenter).
//
// STUB (not vcsim, written by us after the published vSphere API):
//   - QueryChangedDiskAreas, /stub/cbt, /stub/cbt-stats, /stub/changeid: see cbt.go.
//   - /folder and NFC need a live session; HasPrivilegeOnEntity and its deny list
//     (/stub/privileges): see auth.go.
//   - /stub/vm-state (encryption keyIds, consolidationNeeded, FT state, tools) and
//     /stub/snapshot (quiesce faults, slow snapshot tasks): see vmstate.go.
//   - GET /stub/stats: {"folder_bytes":N,"folder_requests":N,"folder_max_in_flight":N} (the
//     most /folder requests served at once); POST /stub/reset-stats.
//   - POST /stub/folder-503?n=N: the next N /folder requests get 503 (backoff tests).
//   - POST /stub/folder-delay?ms=N: each /folder request waits N ms (slow reads, restart tests).
//   - POST /stub/folder-ignore-range?max=N[&partial=1]: a Range GET covering a whole file of
//     at most N bytes (with partial=1: any range of it) is answered 200 with the whole file
//     (servers vary here for small files).
//   - ExportVm / ExportSnapshot / HttpNfcLease downloads: see nfc.go.
//   - PropertyCollector result paging (vcsim ignores maxObjects): see paging.go.
//   - POST /stub/malform?mode=garbage|truncated|oversized|missingset|noreturnval: the next
//     /sdk reply is broken that way (malformed-reply tests).
package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"io/ioutil"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

var (
	malform                            atomic.Value // next /sdk reply replaced: see serveMalformed
	folderBytes, folderReqs, folder503 int64
	folderDelayMs                      int64
	folderInFlight, folderMaxInFlight  int64
	stubMu                             sync.Mutex
	folderIgnoreRangeMax               int64
	folderIgnorePartial                int64
)

type countingWriter struct {
	http.ResponseWriter
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	atomic.AddInt64(&folderBytes, int64(n))
	return n, err
}

func soapFault(w http.ResponseWriter, typ, msg string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(500)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail><%sFault xmlns="urn:vim25" xsi:type="%s"></%sFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`, msg, typ, typ, typ)
}

// STUB: a hostile or broken server for the next /sdk reply.
func serveMalformed(w http.ResponseWriter, mode string) {
	const head = `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	switch mode {
	case "garbage":
		fmt.Fprint(w, "<html>proxy error</html")
	case "truncated":
		fmt.Fprint(w, head+`<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachine">vm-1`)
	case "oversized":
		fmt.Fprint(w, head)
		chunk := bytes.Repeat([]byte(" "), 1<<20)
		for i := 0; i < 65; i++ {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	case "missingset":
		fmt.Fprint(w, head+`<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachine">vm-1</obj><propSet><name>name</name><val xsi:type="xsd:string">locked-vm</val></propSet><missingSet><path>config.hardware.device</path><fault><fault xsi:type="NoPermission"></fault><localizedMessage>Permission to perform this operation was denied.</localizedMessage></fault></missingSet></objects></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>`)
	case "noreturnval":
		fmt.Fprint(w, head+`<CreateSnapshot_TaskResponse xmlns="urn:vim25"></CreateSnapshot_TaskResponse></soapenv:Body></soapenv:Envelope>`)
	}
}

// folderRange: with /stub/folder-ignore-range?max=N, a Range GET covering the whole of a
// file of at most N bytes is answered 200 with the file, as some servers do for small files;
// with &partial=1 also a Range GET of part of it (a server ignoring Range altogether).
func folderRange(r *http.Request, next http.Handler) {
	max := atomic.LoadInt64(&folderIgnoreRangeMax)
	rg := r.Header.Get("Range")
	if max <= 0 || !strings.HasPrefix(rg, "bytes=0-") {
		return
	}
	last, err := strconv.ParseInt(strings.TrimPrefix(rg, "bytes=0-"), 10, 64)
	if err != nil {
		return
	}
	head := r.Clone(r.Context())
	head.Method = http.MethodHead
	head.Header.Del("Range")
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, head)
	size, err := strconv.ParseInt(rec.Header().Get("Content-Length"), 10, 64)
	if err == nil && size <= max && (last >= size-1 || atomic.LoadInt64(&folderIgnorePartial) != 0) {
		r.Header.Del("Range")
	}
}

// STUB: dcPath must be a datacenter's inventory path ("Inventory path to a datacenter ... For
// a datacenter named YourDatacenter located in the folder NorthAmerica which is located in the
// root folder, the dcPath value is NorthAmerica/YourDatacenter", "Datastore Access (/folder)",
// https://vdc-download.vmware.com/vmwb-repository/dcr-public/5c1c7b8c-0d1b-4037-af84-5f43787eb378/fab98b61-56a7-4608-992f-818d3b40e4ae/GUID-5A1B6F74-ABDA-4203-85D9-1728AA6764D7.html).
// vcsim's finder also finds a nested datacenter by its bare name; vCenter does not. On ESXi
// dcPath is optional (it defaults to ha-datacenter).
func checkDcPath(r *http.Request) string {
	dc, given := r.URL.Query()["dcPath"]
	if !given {
		if esxMode {
			return ""
		}
		return "stub: /folder needs dcPath on vCenter"
	}
	want := strings.TrimPrefix(dc[0], "/")
	for _, e := range simulator.Map.All("Datacenter") {
		ref := e.Reference()
		if inventoryPath(&ref, "Datacenter") == want {
			return ""
		}
	}
	return "stub: no datacenter at inventory path " + dc[0]
}

func wrap(next http.Handler) http.Handler {
	sdkHandler = next
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/folder"):
			atomic.AddInt64(&folderReqs, 1)
			if atomic.AddInt64(&folder503, -1) >= 0 {
				http.Error(w, "stub: busy", 503)
				return
			}
			atomic.StoreInt64(&folder503, 0)
			// STUB (auth.go): a live session and the datastore privileges, as vCenter demands.
			if !requestSessionLive(r) {
				http.Error(w, "stub: no live vmware_soap_session", http.StatusUnauthorized)
				return
			}
			if denied("Datastore.Browse") || denied("Datastore.FileManagement") {
				http.Error(w, "stub: permission denied", http.StatusForbidden)
				return
			}
			if msg := checkDcPath(r); msg != "" {
				http.Error(w, msg, http.StatusNotFound)
				return
			}
			folderRange(r, next)
			n := atomic.AddInt64(&folderInFlight, 1)
			for {
				m := atomic.LoadInt64(&folderMaxInFlight)
				if n <= m || atomic.CompareAndSwapInt64(&folderMaxInFlight, m, n) {
					break
				}
			}
			if ms := atomic.LoadInt64(&folderDelayMs); ms > 0 {
				time.Sleep(time.Duration(ms) * time.Millisecond)
			}
			next.ServeHTTP(countingWriter{w}, r)
			atomic.AddInt64(&folderInFlight, -1)
		case strings.HasPrefix(r.URL.Path, "/nfc/"):
			serveNfcDownload(w, r)
		case r.URL.Path == "/stub/nfc" || r.URL.Path == "/stub/nfc-stats":
			serveNfcStub(w, r)
		case r.URL.Path == "/stub/page" || r.URL.Path == "/stub/page-stats":
			servePageStub(w, r)
		case r.URL.Path == "/stub/datastore-type":
			setDatastoreType(w, r)
		case r.URL.Path == "/stub/folder-delay":
			n, _ := strconv.ParseInt(r.URL.Query().Get("ms"), 10, 64)
			atomic.StoreInt64(&folderDelayMs, n)
		case r.URL.Path == "/stub/folder-ignore-range":
			n, _ := strconv.ParseInt(r.URL.Query().Get("max"), 10, 64)
			atomic.StoreInt64(&folderIgnoreRangeMax, n)
			p, _ := strconv.ParseInt(r.URL.Query().Get("partial"), 10, 64)
			atomic.StoreInt64(&folderIgnorePartial, p)
		case r.URL.Path == "/stub/stats":
			fmt.Fprintf(w, `{"folder_bytes":%d,"folder_requests":%d,"folder_max_in_flight":%d}`, atomic.LoadInt64(&folderBytes), atomic.LoadInt64(&folderReqs), atomic.LoadInt64(&folderMaxInFlight))
		case r.URL.Path == "/stub/reset-stats":
			atomic.StoreInt64(&folderBytes, 0)
			atomic.StoreInt64(&folderReqs, 0)
			atomic.StoreInt64(&folderMaxInFlight, 0)
		case r.URL.Path == "/stub/folder-503":
			n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
			atomic.StoreInt64(&folder503, n)
		case r.URL.Path == "/stub/malform":
			malform.Store(r.URL.Query().Get("mode"))
		case r.URL.Path == "/stub/changeid":
			setChangeID(w, r)
		case r.URL.Path == "/stub/cbt":
			setCBT(w, r)
		case r.URL.Path == "/stub/cbt-stats":
			cbtStats(w)
		case r.URL.Path == "/stub/vm-state":
			setVMState(w, r)
		case r.URL.Path == "/stub/snapshot":
			setSnapshotStub(w, r)
		case r.URL.Path == "/stub/privileges":
			setDenied(w, r)
		case r.URL.Path == "/stub/privilege-stats":
			privilegeStats(w)
		case r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/sdk"):
			body, err := ioutil.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			if mode, _ := malform.Swap("").(string); mode != "" {
				serveMalformed(w, mode)
				return
			}
			switch {
			case bytes.Contains(body, []byte("<QueryChangedDiskAreas")):
				serveQCDA(w, body)
				return
			case bytes.Contains(body, []byte("<ExportVm")) || bytes.Contains(body, []byte("<ExportSnapshot")):
				serveExport(w, r, body)
				return
			case bytes.Contains(body, []byte("<HasPrivilegeOnEntity")):
				serveHasPrivilege(w, r, body)
				return
			case bytes.Contains(body, []byte("<CreateSnapshot_Task")):
				if serveCreateSnapshot(w, r, body) {
					return
				}
			}
			r.Body = ioutil.NopCloser(bytes.NewReader(body))
			if servePaged(w, r, body, next) {
				return
			}
			next.ServeHTTP(w, r)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// selfSigned returns the certificate kept in dir (cert.pem + key.pem) when there is one, so a
// restarted simulator shows the same certificate as a restarted vCenter would; otherwise a
// new one (saved there when dir is set).
// inventoryPath: the path of the first ancestor of type kind (from ref up), names joined by
// "/" from below the root folder, e.g. "F0/DC1".
func inventoryPath(ref *types.ManagedObjectReference, kind string) string {
	for ref != nil && ref.Type != kind {
		e, ok := simulator.Map.Get(*ref).(mo.Entity)
		if !ok {
			return "?"
		}
		ref = e.Entity().Parent
	}
	var names []string
	for ref != nil {
		e, ok := simulator.Map.Get(*ref).(mo.Entity)
		if !ok || e.Entity().Parent == nil {
			break
		}
		names = append([]string{e.Entity().Name}, names...)
		ref = e.Entity().Parent
	}
	return strings.Join(names, "/")
}

func colonHex(b []byte) string {
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02X", x)
	}
	return strings.Join(parts, ":")
}

func selfSigned(dir string) (tls.Certificate, error) {
	if dir != "" {
		if c, err := tls.LoadX509KeyPair(dir+"/cert.pem", dir+"/key.pem"); err == nil {
			return c, nil
		}
	}
	c, err := newSelfSigned()
	if err != nil || dir == "" {
		return c, err
	}
	keyDer, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return c, err
	}
	_ = ioutil.WriteFile(dir+"/cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o644)
	_ = ioutil.WriteFile(dir+"/key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDer}), 0o600)
	return c, nil
}

func newSelfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "vcsim-godwit"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func main() {
	esx := flag.Bool("esx", false, "simulate a standalone ESXi host instead of vCenter")
	cred := flag.String("cred", "", "user:password the simulator accepts (default: any)")
	certOut := flag.String("cert-out", "", "write the server certificate (PEM) here")
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (a fixed port lets a test restart the simulator in place)")
	tlsDir := flag.String("tls-dir", "", "keep the TLS certificate and key here and reuse them on restart")
	datacenters := flag.Int("datacenters", 1, "datacenters in the VPX model (vcsim's Model.Datacenter)")
	folders := flag.Int("folders", 0, "datacenters placed inside a folder (vcsim's Model.Folder: the last N get folder F<i>)")
	idle := flag.Duration("session-idle-timeout", 0, "expire sessions idle this long (vcsim's SessionIdleTimeout; 0: never)")
	vms := flag.Int("vm", 0, "VMs per standalone host and per cluster resource pool (vcsim's Model.Machine; 0: its default, 2)")
	flag.Parse()

	model := simulator.VPX()
	if *esx {
		model = simulator.ESX()
		esxMode = true
	} else {
		model.Datacenter = *datacenters
		model.Folder = *folders
	}
	if *vms > 0 {
		model.Machine = *vms
	}
	simulator.SessionIdleTimeout = *idle
	model.Autostart = true
	if err := model.Create(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// A fresh P-256 certificate per run: the simulator's built-in httptest certificate is
	// RSA-1024, which rustls/ring (rightly) refuse to verify signatures with.
	cert, err := selfSigned(*tlsDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	model.Service.Listen = &url.URL{Host: *listen}
	if *cred != "" {
		parts := strings.SplitN(*cred, ":", 2)
		model.Service.Listen.User = url.UserPassword(parts[0], parts[1])
		credUser, credPass = parts[0], parts[1]
	}
	srv := model.Service.NewServer()
	srv.Config.Handler = wrap(srv.Config.Handler)
	if *certOut != "" {
		pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
		if err := ioutil.WriteFile(*certOut, pemBytes, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	u := *srv.URL
	u.User = nil
	ownHost = u.Host
	nfcDefault = u.Host
	sha1sum := sha1.Sum(srv.Certificate().Raw)
	certSHA1 = colonHex(sha1sum[:])
	if *esx {
		nfcDefault = "*"
	}
	fmt.Printf("URL %s\n", u.String())
	sum := sha256.Sum256(srv.Certificate().Raw)
	fmt.Printf("FINGERPRINT %s\n", hex.EncodeToString(sum[:]))
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		fmt.Printf("DATASTORE %s %s\n", ds.Name, ds.Info.GetDatastoreInfo().Url)
		// The datacenter's inventory path (folders included) and the datastore's MoRef.
		fmt.Printf("DSDC %s %s %s %s\n", inventoryPath(ds.Parent, "Datacenter"), ds.Self.Value, ds.Name, ds.Info.GetDatastoreInfo().Url)
	}
	fmt.Println("READY")

	stop := make(chan os.Signal, 2)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		in := bufio.NewReader(os.Stdin)
		for {
			if _, err := in.ReadByte(); err != nil {
				stop <- syscall.SIGTERM
				return
			}
		}
	}()
	<-stop
	srv.Close()
	model.Remove()
}
