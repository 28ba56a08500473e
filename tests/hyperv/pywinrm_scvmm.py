"""Run the repo's scvmm-inventory.ps1 with pywinrm (a client nobody on the team wrote) against a
simulator, as Godwit sends it. Usage: pywinrm_scvmm.py URL CA_PEM SCRIPT_PATH; password in
GODWIT_SIM_PASSWORD. Prints one JSON line: rc, the parsed JSON (rc 0) or stderr."""
import json, os, sys
import winrm

url, ca, script = sys.argv[1:4]
s = winrm.Session(url, auth=("Administrator", os.environ["GODWIT_SIM_PASSWORD"]),
                  transport="ntlm", server_cert_validation="validate", ca_trust_path=ca)
r = s.run_ps(open(script, encoding="utf-8").read())
out = {"rc": r.status_code}
if r.status_code == 0:
    out["json"] = json.loads(r.std_out.decode())
else:
    out["stderr"] = r.std_err.decode()
print(json.dumps(out))
