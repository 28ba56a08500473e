"""Drive the simulator's checkpoint and range-read scripts with pywinrm (a client nobody on the
team wrote), built from the repo's .ps1 files exactly as Godwit sends them (the $GodwitArgs line
then the script). Usage: pywinrm_checkpoint.py URL CA_PEM SCRIPTS_DIR VM_ID;
password in GODWIT_SIM_PASSWORD. Prints one JSON line."""
import base64, hashlib, json, os, sys
import winrm

url, ca, scripts, vm_id = sys.argv[1:5]
s = winrm.Session(url, auth=("Administrator", os.environ["GODWIT_SIM_PASSWORD"]),
                  transport="ntlm", server_cert_validation="validate", ca_trust_path=ca)


def run(name, args):
    body = open(os.path.join(scripts, name), encoding="utf-8").read()
    js = json.dumps(args, separators=(",", ":"), ensure_ascii=False)
    for q in "'\u2018\u2019\u201a\u201b":
        js = js.replace(q, "\\u%04x" % ord(q))
    r = s.run_ps("$ProgressPreference = 'SilentlyContinue'\n$GodwitArgs = ConvertFrom-Json '" + js + "'\n" + body)
    return r.status_code, r.std_out.decode(), r.std_err.decode()


out = {}
rc, so, se = run("checkpoint-create.ps1", {"VmId": vm_id, "Name": "godwit-pywinrm"})
out["create"] = {"rc": rc, "json": json.loads(so) if rc == 0 else se}
path = out["create"]["json"]["Disks"][0]["Path"] if rc == 0 else ""
rc, so, se = run("read-range.ps1", {"Path": path, "Offset": 0, "Length": 512})
if rc == 0:
    digest, data = so.split(":", 1)
    raw = base64.b64decode(data)
    out["read"] = {"rc": rc, "len": len(raw), "ok": hashlib.sha256(raw).hexdigest() == digest,
                   "head": raw[:8].decode("latin-1")}
else:
    out["read"] = {"rc": rc, "stderr": se}
rc, so, se = run("read-range.ps1", {"Path": "C:\\Windows\\System32\\config\\SAM", "Offset": 0, "Length": 1})
out["outside"] = {"rc": rc, "stderr": se}
rc, so, se = run("checkpoint-remove.ps1", {"VmId": vm_id, "Name": "godwit-pywinrm"})
out["remove"] = {"rc": rc, "json": json.loads(so) if rc == 0 else se}
print(json.dumps(out))
