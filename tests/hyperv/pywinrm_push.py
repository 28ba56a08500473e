"""Run push-ranges.ps1 on the simulator with pywinrm (a client nobody on the team wrote), built
from the repo's .ps1 file exactly as Godwit sends it (the $GodwitArgs line, then the script).
Usage: pywinrm_push.py URL CA_PEM SCRIPTS_DIR ARGS_JSON; password in GODWIT_SIM_PASSWORD.
Prints one JSON line: {"rc", "stdout", "stderr"}."""
import json, os, sys
import winrm

url, ca, scripts, args = sys.argv[1:5]
s = winrm.Session(url, auth=("Administrator", os.environ["GODWIT_SIM_PASSWORD"]),
                  transport="ntlm", server_cert_validation="validate", ca_trust_path=ca,
                  read_timeout_sec=70, operation_timeout_sec=60)
body = open(os.path.join(scripts, "push-ranges.ps1"), encoding="utf-8").read()
js = json.dumps(json.loads(args), separators=(",", ":"), ensure_ascii=False)
for q in "'\u2018\u2019\u201a\u201b":
    js = js.replace(q, "\\u%04x" % ord(q))
r = s.run_ps("$ProgressPreference = 'SilentlyContinue'\n$GodwitArgs = ConvertFrom-Json '" + js + "'\n" + body)
print(json.dumps({"rc": r.status_code, "stdout": r.std_out.decode(), "stderr": r.std_err.decode()}))
