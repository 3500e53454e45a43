"""Log set-up: what third-party libraries may add to the daemon's log."""
import io
import logging

import hpack

from appliance.process import log


def test_debug_log_leaves_out_hpack_header_decoding():
    root, stream = logging.getLogger(), io.StringIO()
    saved = root.handlers[:], root.level, logging.getLogger("hpack").level
    log.setup("debug", stream=stream)
    try:
        hpack.Decoder().decode(hpack.Encoder().encode([(b":path", b"/x")]))
        logging.getLogger("appliance.test").debug("ours")
    finally:
        root.handlers[:], root.level = saved[:2]
        logging.getLogger("hpack").setLevel(saved[2])
    assert "ours" in stream.getvalue()
    assert "Decod" not in stream.getvalue()
