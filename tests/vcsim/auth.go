// STUB (not vcsim; written by us after the published vSphere API): what vcsim 0.24.2 does not
// check about sessions and privileges.
//
//   - /folder needs a live session. vcsim serves datastore files to anyone; vCenter and ESXi
//     authenticate every /folder request by the vmware_soap_session cookie (or HTTP Basic) and
//     answer 401 to a request without a live session ("HTTP Access to vSphere Server Files":
//     https://vdc-download.vmware.com/vmwb-repository/dcr-public/5c1c7b8c-0d1b-4037-af84-5f43787eb378/fab98b61-56a7-4608-992f-818d3b40e4ae/GUID-D8AF2F09-09B8-47AD-9F10-BA80F8A2BA6A.html
//     "HTTP access requires the same privileges needed to obtain these files using any other
//     mechanism"). So a session that expired (vcsim's own SessionIdleTimeout, -session-idle-timeout)
//     or was ended with SessionManager.TerminateSession (vcsim's own method) gets 401 on /folder
//     too. Whether a session is live is asked of vcsim itself with SessionIsActive over an
//     internal session of the stub, so it never refreshes the client's LastActiveTime (we do not
//     know whether a real /folder GET keeps a SOAP session alive; we assume it does not).
//   - NFC downloads from this server's own address (an ESXi host answering directly, or the
//     host the lease names being this one) need a live session the same way; device URLs on
//     another host name are authorised by the lease alone (see nfc.go).
//   - HasPrivilegeOnEntity: vcsim grants everything. The stub answers from a deny list
//     (POST /stub/privileges?deny=Priv.A,Priv.B; empty clears it) and, like vCenter, enforces
//     it: CreateSnapshot_Task without VirtualMachine.State.CreateSnapshot is refused with
//     NoPermission, /folder without Datastore.Browse / Datastore.FileManagement with 403. The
//     sessionId parameter must name a live session (the API reference: "The session ID to check
//     privileges for. A session ID can be obtained from UserSession.key",
//     https://developer.broadcom.com/xapis/virtual-infrastructure-json-api/latest/data-structures/HasPrivilegeOnEntityRequestType);
//     anything else is refused with InvalidArgument.
package main

import (
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
)

var (
	sdkHandler        http.Handler // vcsim's own handler
	credUser          string
	credPass          string
	esxMode           bool
	checkerMu         sync.Mutex
	checkerCookie     string
	deniedMu          sync.Mutex
	deniedPrivs       = map[string]bool{}
	privilegeCheckLog []string // "entity privId=granted" lines, for /stub/privilege-stats
)

const envHead = `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`
const envTail = `</soapenv:Body></soapenv:Envelope>`

// internalSOAP sends a SOAP body to vcsim itself (in process) with an optional session cookie.
func internalSOAP(body, cookie string) *httptest.ResponseRecorder {
	return internalRaw(envHead+body+envTail, cookie)
}

// internalRaw sends a whole SOAP envelope to vcsim itself.
func internalRaw(envelope, cookie string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/sdk", strings.NewReader(envelope))
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	if cookie != "" {
		req.AddCookie(&http.Cookie{Name: "vmware_soap_session", Value: cookie})
	}
	rec := httptest.NewRecorder()
	sdkHandler.ServeHTTP(rec, req)
	return rec
}

func xmlEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// checker returns the stub's own session cookie, logging in when it has none.
func checker() string {
	checkerMu.Lock()
	defer checkerMu.Unlock()
	if checkerCookie != "" {
		return checkerCookie
	}
	rec := internalSOAP(fmt.Sprintf(`<Login xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this><userName>%s</userName><password>%s</password></Login>`, xmlEscape(credUser), xmlEscape(credPass)), "")
	for _, c := range rec.Result().Cookies() {
		if c.Name == "vmware_soap_session" {
			checkerCookie = c.Value
		}
	}
	return checkerCookie
}

func resetChecker() {
	checkerMu.Lock()
	checkerCookie = ""
	checkerMu.Unlock()
}

// sessionLive asks vcsim (SessionIsActive) whether the session with this key exists.
func sessionLive(key string) bool {
	if key == "" {
		return false
	}
	if esxMode || credUser == "" {
		// vcsim implements SessionIsActive only for vCenter (ESX: NotImplemented), and without
		// -cred the user name to compare is unknown: no check (documented in docs/vsphere.md).
		return true
	}
	for attempt := 0; attempt < 2; attempt++ {
		c := checker()
		rec := internalSOAP(fmt.Sprintf(`<SessionIsActive xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this><sessionID>%s</sessionID><userName>%s</userName></SessionIsActive>`, xmlEscape(key), xmlEscape(credUser)), c)
		body := rec.Body.String()
		if strings.Contains(body, "NotAuthenticated") {
			resetChecker()
			continue
		}
		return strings.Contains(body, "<returnval>true</returnval>")
	}
	return false
}

// requestSessionLive: the request carries the cookie of a live session.
func requestSessionLive(r *http.Request) bool {
	c, err := r.Cookie("vmware_soap_session")
	if err != nil {
		return false
	}
	return sessionLive(strings.Trim(c.Value, `"`))
}

func denied(priv string) bool {
	deniedMu.Lock()
	defer deniedMu.Unlock()
	return deniedPrivs[priv]
}

func setDenied(w http.ResponseWriter, r *http.Request) {
	deniedMu.Lock()
	defer deniedMu.Unlock()
	deniedPrivs = map[string]bool{}
	for _, p := range strings.Split(r.URL.Query().Get("deny"), ",") {
		if p = strings.TrimSpace(p); p != "" {
			deniedPrivs[p] = true
		}
	}
}

func privilegeStats(w http.ResponseWriter) {
	deniedMu.Lock()
	defer deniedMu.Unlock()
	fmt.Fprintf(w, `{"checks":%d}`, len(privilegeCheckLog))
}

type hasPrivReq struct {
	Entity    string   `xml:"Body>HasPrivilegeOnEntity>entity"`
	SessionID string   `xml:"Body>HasPrivilegeOnEntity>sessionId"`
	PrivID    []string `xml:"Body>HasPrivilegeOnEntity>privId"`
}

// STUB: HasPrivilegeOnEntity answered from the deny list.
func serveHasPrivilege(w http.ResponseWriter, r *http.Request, body []byte) {
	if !requestSessionLive(r) {
		soapFault(w, "NotAuthenticated", "stub: no session")
		return
	}
	var q hasPrivReq
	if err := xml.Unmarshal(body, &q); err != nil {
		soapFault(w, "InvalidRequest", "stub: cannot parse HasPrivilegeOnEntity")
		return
	}
	if !sessionLive(strings.TrimSpace(q.SessionID)) {
		soapFault(w, "InvalidArgument", "stub: sessionId "+q.SessionID+" names no live session")
		return
	}
	var sb strings.Builder
	deniedMu.Lock()
	for _, p := range q.PrivID {
		granted := !deniedPrivs[strings.TrimSpace(p)]
		privilegeCheckLog = append(privilegeCheckLog, fmt.Sprintf("%s %s=%v", q.Entity, p, granted))
		fmt.Fprintf(&sb, "<returnval>%v</returnval>", granted)
	}
	deniedMu.Unlock()
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	fmt.Fprintf(w, `%s<HasPrivilegeOnEntityResponse xmlns="urn:vim25">%s</HasPrivilegeOnEntityResponse>%s`, envHead, sb.String(), envTail)
}

// STUB: a request refused for a denied privilege, as vCenter answers (NoPermission).
func noPermission(w http.ResponseWriter, priv string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(500)
	fmt.Fprintf(w, `%s<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>Permission to perform this operation was denied.</faultstring><detail><NoPermissionFault xmlns="urn:vim25" xsi:type="NoPermission"><privilegeId>%s</privilegeId></NoPermissionFault></detail></soapenv:Fault>%s`, envHead, xmlEscape(priv), envTail)
}
