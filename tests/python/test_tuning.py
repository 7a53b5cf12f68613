"""The tuning kit: `tuning/check` runs on this host, finds io_uring working (the broker's tests
need it), and gives a fix for every finding; every sysctl key it ships exists in this kernel."""
import os
import re
import subprocess

from conftest import ROOT


def test_check_reports_io_uring_and_a_fix_per_finding():
    r = subprocess.run(["bash", os.path.join(ROOT, "tuning", "check"), "--shards", "2"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode in (0, 1), r.stderr
    out = r.stdout
    assert "io_uring_setup works" in out, out
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(("FAIL", "warn")):
            assert lines[i + 1].strip().startswith("fix:"), out
    assert ("ready" in lines[-1]) and ((r.returncode == 0) == (lines[-1] == "ready")), out


def test_check_flags_too_little_memlock_for_many_shards():
    r = subprocess.run(["bash", "-c", f"ulimit -l 1024 && bash {ROOT}/tuning/check --shards 64"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "memlock 1024 KiB < 32768 KiB" in r.stdout, r.stdout


def test_every_shipped_sysctl_exists():
    keys = []
    for line in open(os.path.join(ROOT, "tuning", "99-coremq.conf")):
        m = re.match(r"^([a-z0-9_.]+)\s*=", line)
        if m:
            keys.append(m.group(1))
    assert len(keys) >= 10
    missing = [k for k in keys if not os.path.exists("/proc/sys/" + k.replace(".", "/"))
               and k != "kernel.io_uring_disabled"]  # added in 6.6; older kernels lack it
    assert not missing, missing
