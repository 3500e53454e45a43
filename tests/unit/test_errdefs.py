"""Error kinds and gRPC status codes: the lowest layer, which imports nothing of ours."""
import subprocess
import sys

from appliance import errdefs
from appliance.grpcserver import call
from appliance.errdefs import StatusCode


def test_errdefs_imports_no_other_module_of_ours():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, appliance.errdefs\n"
         "print(sorted(m for m in sys.modules if m.startswith('appliance')))"],
        check=True, capture_output=True, text=True, timeout=60).stdout
    assert set(eval(out)) - {"appliance", "appliance._version"} == {"appliance.errdefs"}


def test_the_grpc_server_uses_the_status_codes_of_errdefs():
    assert call.StatusCode is StatusCode
    assert errdefs.status_of(errdefs.NotFound("x")) == (StatusCode.NOT_FOUND, "x")
    assert errdefs.status_of(TimeoutError()) == (StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    assert type(errdefs.from_status(StatusCode.ALREADY_EXISTS, "y")) is errdefs.AlreadyExists
