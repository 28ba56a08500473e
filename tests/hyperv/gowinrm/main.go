// gowinrm-check: drive the Godwit Hyper-V simulator with the Go WinRM client from Debian
// (golang-github-masterzen-winrm-dev), a third WinRM client nobody on the team wrote.
// Usage: gowinrm-check HOST PORT CA_PEM [basic|ntlm]; password in GODWIT_SIM_PASSWORD.
// Prints one JSON line, like tests/hyperv/pywinrm_check.py. Build: tests/hyperv/gowinrm/build.sh.
package main

import (
	"encoding/json"
	"fmt"
	"io/ioutil"
	"os"
	"strconv"
	"time"

	"github.com/masterzen/winrm"
)

type result struct {
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	Rc     int    `json:"rc"`
	Err    string `json:"err,omitempty"`
}

func client(host string, port int, ca []byte, auth, password string) *winrm.Client {
	ep := winrm.NewEndpoint(host, port, true, false, ca, nil, nil, 30*time.Second)
	params := *winrm.DefaultParameters
	if auth == "ntlm" {
		params.TransportDecorator = func() winrm.Transporter { return &winrm.ClientNTLM{} }
	}
	c, err := winrm.NewClientWithParameters(ep, "Administrator", password, &params)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	return c
}

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: gowinrm-check HOST PORT CA_PEM [basic|ntlm]")
		os.Exit(2)
	}
	host := os.Args[1]
	port, err := strconv.Atoi(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ca, err := ioutil.ReadFile(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	auth := "basic"
	if len(os.Args) > 4 {
		auth = os.Args[4]
	}
	c := client(host, port, ca, auth, os.Getenv("GODWIT_SIM_PASSWORD"))
	out := map[string]interface{}{}
	for _, t := range []struct{ name, cmd string }{
		{"hello", winrm.Powershell("Write-Output 'hello from sim'")},
		{"err", winrm.Powershell("Write-Error 'boom'")},
		{"exit", winrm.Powershell("exit 3")},
		{"cmd", "echo hi"},
	} {
		stdout, stderr, rc, err := c.RunWithString(t.cmd, "")
		r := result{Stdout: stdout, Stderr: stderr, Rc: rc}
		if err != nil {
			r.Err = err.Error()
		}
		out[t.name] = r
	}
	_, _, _, err = client(host, port, ca, auth, "wrong").RunWithString("echo x", "")
	if err != nil {
		out["badpw"] = err.Error()
	} else {
		out["badpw"] = "accepted"
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}
