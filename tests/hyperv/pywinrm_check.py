"""Drive the Godwit Hyper-V simulator with pywinrm (a client nobody on the team wrote).
Usage: pywinrm_check.py URL CA_PEM [TRANSPORT]; TRANSPORT is basic (default) or ntlm; password in
GODWIT_SIM_PASSWORD. Prints one JSON line."""
import json, os, sys
import winrm

url, ca = sys.argv[1], sys.argv[2]
transport = sys.argv[3] if len(sys.argv) > 3 else "basic"
s = winrm.Session(url, auth=("Administrator", os.environ["GODWIT_SIM_PASSWORD"]),
                  transport=transport, server_cert_validation="validate", ca_trust_path=ca)
out = {}
for name, kind, text in [("hello", "ps", "Write-Output 'hello from sim'"),
                         ("err", "ps", "Write-Error 'boom'"),
                         ("exit", "ps", "exit 3"),
                         ("cmd", "cmd", "echo hi")]:
    r = s.run_ps(text) if kind == "ps" else s.run_cmd(text)
    out[name] = {"stdout": r.std_out.decode(), "stderr": r.std_err.decode(), "rc": r.status_code}
try:
    winrm.Session(url, auth=("Administrator", "wrong"), transport=transport,
                  server_cert_validation="validate", ca_trust_path=ca).run_cmd("echo x")
    out["badpw"] = "accepted"
except winrm.exceptions.InvalidCredentialsError as e:
    out["badpw"] = "InvalidCredentialsError"
print(json.dumps(out))
