"""Drive the Godwit Hyper-V simulator with pypsrp's WinRS client (WSMan + WinRS + Process), a
second WinRM client nobody on the team wrote. Usage: pypsrp_check.py HOST PORT CA_PEM [AUTH];
AUTH is basic (default) or ntlm; password in GODWIT_SIM_PASSWORD. Prints one JSON line."""
import base64, json, os, sys
from pypsrp.exceptions import AuthenticationError, WSManFaultError
from pypsrp.shell import Process, SignalCode, WinRS
from pypsrp.wsman import WSMan

host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
auth = sys.argv[4] if len(sys.argv) > 4 else "basic"


def wsman(password):
    return WSMan(host, port=port, path="wsman", ssl=True, auth=auth, username="Administrator",
                 password=password, cert_validation=ca, encryption="never")


def ps(script):
    # What pywinrm's run_ps and Godwit send: powershell -EncodedCommand <UTF-16LE base64>.
    return base64.b64encode(script.encode("utf-16-le")).decode()


out = {}
with WinRS(wsman(os.environ["GODWIT_SIM_PASSWORD"])) as shell:
    out["shell_id"] = bool(shell.id)
    for name, exe, args in [("hello", "powershell", ["-EncodedCommand", ps("Write-Output 'hello from sim'")]),
                            ("err", "powershell", ["-EncodedCommand", ps("Write-Error 'boom'")]),
                            ("exit", "powershell", ["-EncodedCommand", ps("exit 3")]),
                            ("cmd", "echo hi", None)]:
        p = Process(shell, exe, args)
        p.invoke()
        p.signal(SignalCode.CTRL_C)
        out[name] = {"stdout": p.stdout.decode(), "stderr": p.stderr.decode(), "rc": p.rc}
try:
    with WinRS(wsman("wrong")) as shell:
        Process(shell, "echo x").invoke()
    out["badpw"] = "accepted"
except AuthenticationError:
    out["badpw"] = "AuthenticationError"
except WSManFaultError as e:
    out["badpw"] = "WSManFaultError %s" % e
print(json.dumps(out))
