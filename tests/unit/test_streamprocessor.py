"""stream_processors: external binaries turning one media type into another."""
import gzip
import io
import os
import time

import pytest

from appliance.config import StreamProcessor
from appliance.core import streamprocessor as sp

TAR = "application/vnd.oci.image.layer.v1.tar"


def script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def processors(**entries):
    return sp.from_config({name: StreamProcessor(**e) for name, e in entries.items()})


def test_gunzip_from_a_file_with_media_type_env(tmp_path):
    blob = tmp_path / "layer.gz"
    blob.write_bytes(gzip.compress(b"x" * 300000))
    unz = script(tmp_path, "unz", 'echo "$STREAM_PROCESSOR_MEDIATYPE $EXTRA" >&2; exec gzip -dc\n')
    ps = processors(unz=dict(accepts=["application/x-test+gzip"], returns=TAR, path=unz,
                             env=["EXTRA=yes"]))
    with open(blob, "rb") as f:
        mt, out = ps.unwrap("application/x-test+gzip", f, is_final=lambda m: m == TAR)
        assert mt == TAR and out.read() == b"x" * 300000
        out._stderr.seek(0)
        assert out._stderr.read() == b"application/x-test+gzip yes\n"
        out.close()


def test_payload_on_fd3_and_chain_from_memory(tmp_path):
    first = script(tmp_path, "first", "cat <&3; cat\n")
    second = script(tmp_path, "second", "tr a-z A-Z\n")
    ps = processors(one=dict(accepts=["m/a"], returns="m/b", path=first),
                    two=dict(accepts=["m/b"], returns=TAR, path=second))
    mt, out = ps.unwrap("m/a", io.BytesIO(b"body"), {"one": b"payload-"},
                        is_final=lambda m: m == TAR)
    assert (mt, out.read()) == (TAR, b"PAYLOAD-BODY")
    out.close()


def test_failure_raises_its_stderr_at_end_of_stream(tmp_path):
    bad = script(tmp_path, "bad", "cat >/dev/null; echo 'cannot unpack: boom' >&2; exit 3\n")
    ps = processors(bad=dict(accepts=["m/a"], returns=TAR, path=bad))
    _, out = ps.unwrap("m/a", io.BytesIO(b"data"), is_final=lambda m: m == TAR)
    with pytest.raises(sp.StreamProcessorError, match="cannot unpack: boom"):
        out.read()
    out.close()


def test_no_processor_and_missing_binary():
    ps = processors(x=dict(accepts=["m/a"], returns=TAR, path="no-such-binary-here"))
    with pytest.raises(sp.NotFound):
        ps.unwrap("m/other", io.BytesIO(b""), is_final=lambda m: m == TAR)
    assert ps.unwrap("m/other", io.BytesIO(b""))[0] == "m/other"  # nothing applies
    with pytest.raises(sp.StreamProcessorError, match="executable file not found"):
        ps.unwrap("m/a", io.BytesIO(b""))


def test_close_early_kills_the_processor(tmp_path):
    ps = processors(y=dict(accepts=["m/a"], returns=TAR, path="yes"))
    _, out = ps.unwrap("m/a", io.BytesIO(b""))
    assert out.read(10) == b"y\ny\ny\ny\ny\n"
    started = time.monotonic()
    out.close()
    assert time.monotonic() - started < 5
    with pytest.raises(ChildProcessError):
        os.waitpid(out.pid, os.WNOHANG)  # reaped
