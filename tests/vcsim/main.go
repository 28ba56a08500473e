// vcsim-godwit: govmomi's vCenter simulator (vcsim, Debian golang-github-vmware-govmomi-dev
// 0.24.2) for Godwit's tests, over TLS, plus a clearly labelled STUB layer for what vcsim
// lacks (main.go, nfc.go). Build: tests/vcsim/build.sh. Output on stdout, one per line:
//   URL https://127.0.0.1:PORT/sdk
//   FINGERPRINT <sha256 hex of the certificate>
//   DATASTORE <name> <directory>
//   READY
// It stops (removing its datastore directories) when stdin closes or on SIGINT/SIGTERM.
//
// STUB (not vcsim, written by us after the published vSphere API):
//   - QueryChangedDiskAreas on POST /sdk: answers DiskChangeInfo from the areas registered for
//     the changeId with POST /stub/cbt; an unknown changeId gets a FileFault. Each answer
//     covers at most `chunk` bytes so clients must loop over the capacity.
//   - POST /stub/changeid {"vm":"vm-57","key":203,"change_id":"x"} sets backing.changeId.
//   - GET /stub/stats: {"folder_bytes":N,"folder_requests":N,"folder_max_in_flight":N} (the
//     most /folder requests served at once); POST /stub/reset-stats.
//   - POST /stub/folder-503?n=N: the next N /folder requests get 503 (backoff tests).
//   - POST /stub/folder-delay?ms=N: each /folder request waits N ms (slow reads, restart tests).
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
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"time"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"encoding/xml"
	"flag"
	"fmt"
	"io/ioutil"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

type cbtState struct {
	Chunk int64                 `json:"chunk"`
	Areas map[string][][2]int64 `json:"areas"` // changeId -> [[start,len],...]
}

var (
	malform                            atomic.Value // next /sdk reply replaced: see serveMalformed
	folderBytes, folderReqs, folder503 int64
	folderDelayMs                      int64
	folderInFlight, folderMaxInFlight  int64
	stubMu                             sync.Mutex
	stub                               = cbtState{Chunk: 1 << 20, Areas: map[string][][2]int64{}}
)

type countingWriter struct {
	http.ResponseWriter
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	atomic.AddInt64(&folderBytes, int64(n))
	return n, err
}

type qcda struct {
	This        string `xml:"Body>QueryChangedDiskAreas>_this"`
	DeviceKey   int32  `xml:"Body>QueryChangedDiskAreas>deviceKey"`
	StartOffset int64  `xml:"Body>QueryChangedDiskAreas>startOffset"`
	ChangeID    string `xml:"Body>QueryChangedDiskAreas>changeId"`
}

func soapFault(w http.ResponseWriter, typ, msg string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(500)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail><%sFault xmlns="urn:vim25" xsi:type="%s"></%sFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`, msg, typ, typ, typ)
}

func diskCapacity(vmID string, key int32) (int64, bool) {
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: vmID}
	obj := simulator.Map.Get(ref)
	vm, ok := obj.(*simulator.VirtualMachine)
	if !ok {
		return 0, false
	}
	var capacity int64
	found := false
	simulator.Map.WithLock(vm, func() {
		for _, d := range vm.Config.Hardware.Device {
			if disk, ok := d.(*types.VirtualDisk); ok && disk.Key == key {
				capacity, found = disk.CapacityInKB*1024, true
			}
		}
	})
	return capacity, found
}

// STUB: QueryChangedDiskAreas after the published API (DiskChangeInfo, byte offsets).
func serveQCDA(w http.ResponseWriter, body []byte) {
	var q qcda
	if err := xml.Unmarshal(body, &q); err != nil {
		soapFault(w, "InvalidRequest", "stub: cannot parse QueryChangedDiskAreas")
		return
	}
	capacity, ok := diskCapacity(strings.TrimSpace(q.This), q.DeviceKey)
	if !ok {
		soapFault(w, "InvalidArgument", "stub: no disk with that deviceKey")
		return
	}
	stubMu.Lock()
	areas, known := stub.Areas[q.ChangeID]
	chunk := stub.Chunk
	stubMu.Unlock()
	if q.ChangeID == "*" {
		areas, known = [][2]int64{{0, capacity}}, true
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
		if s < q.StartOffset {
			s = q.StartOffset
		}
		if e > end {
			e = end
		}
		if s < e {
			fmt.Fprintf(&sb, "<changedArea><start>%d</start><length>%d</length></changedArea>", s, e-s)
		}
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>%d</startOffset><length>%d</length>%s</returnval></QueryChangedDiskAreasResponse></soapenv:Body></soapenv:Envelope>`, q.StartOffset, end-q.StartOffset, sb.String())
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

func wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/folder"):
			atomic.AddInt64(&folderReqs, 1)
			if atomic.AddInt64(&folder503, -1) >= 0 {
				http.Error(w, "stub: busy", 503)
				return
			}
			atomic.StoreInt64(&folder503, 0)
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
			var s cbtState
			if err := json.NewDecoder(r.Body).Decode(&s); err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			stubMu.Lock()
			stub = s
			stubMu.Unlock()
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
			if bytes.Contains(body, []byte("<QueryChangedDiskAreas")) {
				serveQCDA(w, body)
				return
			}
			if bytes.Contains(body, []byte("<ExportVm")) || bytes.Contains(body, []byte("<ExportSnapshot")) {
				serveExport(w, r, body)
				return
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
	flag.Parse()

	model := simulator.VPX()
	if *esx {
		model = simulator.ESX()
	}
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
	nfcDefault = u.Host
	if *esx {
		nfcDefault = "*"
	}
	fmt.Printf("URL %s\n", u.String())
	sum := sha256.Sum256(srv.Certificate().Raw)
	fmt.Printf("FINGERPRINT %s\n", hex.EncodeToString(sum[:]))
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		fmt.Printf("DATASTORE %s %s\n", ds.Name, ds.Info.GetDatastoreInfo().Url)
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
