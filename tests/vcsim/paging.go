// STUB (not vcsim, written by us after the published vSphere API): result paging for the
// PropertyCollector. vcsim 0.24 ignores RetrieveOptions.maxObjects and always answers with every
// object at once, so a client's ContinueRetrievePropertiesEx loop would never run against it.
//   - POST /stub/page?n=N: from now on a RetrievePropertiesEx reply with more than N objects
//     is cut to its first N objects plus a <token>; ContinueRetrievePropertiesEx with that token
//     returns the next N (and a new token while any are left). n=0 turns paging off.
//   - An unknown or already used token gets an InvalidArgument fault, as vCenter answers.
//   - GET /stub/page-stats: {"continues":N,"tokens_issued":N}.
package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

type pagedResult struct {
	head, tail string   // the envelope around the response element
	rest       []string // <objects>…</objects> still to hand out
}

var (
	pageSize     int64
	pageMu       sync.Mutex
	pageSeq      int64
	pageTokens   = map[string]*pagedResult{}
	pageContinue int64
)

func servePageStub(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/stub/page":
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		atomic.StoreInt64(&pageSize, n)
	case "/stub/page-stats":
		pageMu.Lock()
		issued := pageSeq
		pageMu.Unlock()
		fmt.Fprintf(w, `{"continues":%d,"tokens_issued":%d}`, atomic.LoadInt64(&pageContinue), issued)
	}
}

// splitObjects cuts the <objects> elements out of a RetrieveResult. ObjectContent does not nest,
// so the first "</objects>" after an "<objects>" closes it.
func splitObjects(s string) (before string, objects []string, after string, ok bool) {
	first := strings.Index(s, "<objects>")
	last := strings.LastIndex(s, "</objects>")
	if first < 0 || last < 0 {
		return "", nil, "", false
	}
	before, after = s[:first], s[last+len("</objects>"):]
	body := s[first : last+len("</objects>")]
	for len(body) > 0 {
		end := strings.Index(body, "</objects>")
		if !strings.HasPrefix(body, "<objects>") || end < 0 {
			return "", nil, "", false
		}
		objects = append(objects, body[:end+len("</objects>")])
		body = body[end+len("</objects>"):]
	}
	return before, objects, after, true
}

// nextPage hands out up to n objects of res and returns them with a token when more are left.
func nextPage(res *pagedResult, n int) string {
	k := n
	if k > len(res.rest) {
		k = len(res.rest)
	}
	page := strings.Join(res.rest[:k], "")
	res.rest = res.rest[k:]
	if len(res.rest) > 0 {
		pageMu.Lock()
		pageSeq++
		tok := fmt.Sprintf("stub-page-%d", pageSeq)
		pageTokens[tok] = res
		pageMu.Unlock()
		page += "<token>" + tok + "</token>"
	}
	return page
}

// servePaged answers a RetrievePropertiesEx or ContinueRetrievePropertiesEx when paging is on;
// false means it did not handle the request.
func servePaged(w http.ResponseWriter, r *http.Request, body []byte, next http.Handler) bool {
	n := int(atomic.LoadInt64(&pageSize))
	if n <= 0 {
		return false
	}
	switch {
	case bytes.Contains(body, []byte("<ContinueRetrievePropertiesEx")):
		atomic.AddInt64(&pageContinue, 1)
		tok := ""
		if i := bytes.Index(body, []byte("<token>")); i >= 0 {
			rest := body[i+len("<token>"):]
			if j := bytes.Index(rest, []byte("</token>")); j >= 0 {
				tok = string(rest[:j])
			}
		}
		pageMu.Lock()
		res, ok := pageTokens[tok]
		delete(pageTokens, tok)
		pageMu.Unlock()
		if !ok {
			soapFault(w, "InvalidArgument", "stub: unknown or used token "+tok)
			return true
		}
		page := nextPage(res, n)
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		fmt.Fprintf(w, `%s<ContinueRetrievePropertiesExResponse xmlns="urn:vim25"><returnval>%s</returnval></ContinueRetrievePropertiesExResponse>%s`, res.head, page, res.tail)
		return true
	case bytes.Contains(body, []byte("<RetrievePropertiesEx")):
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		reply := rec.Body.String()
		before, objects, after, ok := splitObjects(reply)
		if rec.Code != 200 || !ok || len(objects) <= n {
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
			return true
		}
		open := strings.Index(before, "<RetrievePropertiesExResponse")
		closeAt := strings.Index(after, "</RetrievePropertiesExResponse>")
		if open < 0 || closeAt < 0 {
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
			return true
		}
		res := &pagedResult{
			head: before[:open],
			tail: after[closeAt+len("</RetrievePropertiesExResponse>"):],
			rest: objects,
		}
		page := nextPage(res, n)
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		fmt.Fprintf(w, `%s<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval>%s</returnval></RetrievePropertiesExResponse>%s`, res.head, page, res.tail)
		return true
	}
	return false
}
