"""The one atomic write: failures leave the old file, temporaries of live writers are kept."""

import errno
import os
import subprocess
import sys

import pytest

from landscape.atomic import (
    atomic_write,
    atomic_write_text,
    is_temporary,
    remove_stale_temporaries,
    temporary_name,
)


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    p = atomic_write_text(tmp_path / "a.json", "good")

    def full_disk(tmp):
        tmp.write_text("par")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as e:
        atomic_write(p, full_disk)
    assert e.value.errno == errno.ENOSPC
    assert p.read_text() == "good"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.json"]


def test_stale_temporaries_of_dead_processes_only(tmp_path):
    target = tmp_path / "r.nc"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    mine = temporary_name(target)
    theirs = mine.with_name(mine.name.replace(f".{os.getpid()}-", f".{int(dead.stdout)}-"))
    other_host = tmp_path / f".r.nc.elsewhere.{int(dead.stdout)}-00ff00ff.tmp"
    for f in (mine, theirs, other_host):
        f.write_text("x")
        assert is_temporary(f)
    assert remove_stale_temporaries(target) == [theirs]
    assert mine.exists() and other_host.exists() and not theirs.exists()
