"""pywinrm (a client nobody on the team wrote) against the simulator's IdleTimeout: open a shell,
run a command, stay idle for IDLE_S seconds, run another command in the same shell.
Usage: pywinrm_idle.py URL CA_PEM IDLE_S; password in GODWIT_SIM_PASSWORD.
Prints one JSON line: {"first": stdout of the first command, "second_error": the error text of the
second (empty if it worked)}."""
import json, os, sys, time
from winrm.protocol import Protocol

url, ca, idle = sys.argv[1], sys.argv[2], float(sys.argv[3])
p = Protocol(endpoint=url, transport="ntlm", username="Administrator",
             password=os.environ["GODWIT_SIM_PASSWORD"], server_cert_validation="validate",
             ca_trust_path=ca, read_timeout_sec=70, operation_timeout_sec=60)
shell = p.open_shell()
cid = p.run_command(shell, "echo first")
out, err, rc = p.get_command_output(shell, cid)
p.cleanup_command(shell, cid)
time.sleep(idle)
second = ""
try:
    cid = p.run_command(shell, "echo second")
    p.get_command_output(shell, cid)
except Exception as e:  # pywinrm's WSManFaultError (or WinRMError) with the host's fault
    second = "%s: %s" % (type(e).__name__, e)
    code = getattr(e, "code", None) or getattr(e, "wsman_fault_code", None)
    if code is not None:
        second += " (code %s)" % code
print(json.dumps({"first": out.decode().strip(), "second_error": second}))
