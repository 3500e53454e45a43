"""The failpoint hook (appliance/process/failpoint.py): parsing, counts, actions; off by default."""
import errno

import pytest

from appliance.process import failpoint
from appliance.errdefs import ApplianceError


@pytest.fixture(autouse=True)
def disarmed():
    yield
    failpoint.configure("")


def test_off_unless_named():
    assert failpoint.configure_from_env({}) == []
    failpoint.hit("content.commit")   # nothing armed: nothing happens


def test_parse_actions_and_counts():
    names = failpoint.configure("a=error; b=2*error(no luck);c=oserror(ENOSPC);d=sleep(1);e=kill")
    assert names == ["a", "b", "c", "d", "e"]
    with pytest.raises(ApplianceError, match="failpoint a: injected error"):
        failpoint.hit("a")
    for _ in range(2):
        with pytest.raises(ApplianceError, match="^no luck$"):
            failpoint.hit("b")
    failpoint.hit("b")   # the first two hits only
    with pytest.raises(OSError) as err:
        failpoint.hit("c")
    assert err.value.errno == errno.ENOSPC and "failpoint c" in str(err.value)
    failpoint.hit("d")
    failpoint.hit("unnamed")


@pytest.mark.parametrize("spec", ["a", "a=explode", "a=sleep(x)", "a=oserror(ENOPE)", "=kill"])
def test_bad_specs_name_the_item(spec):
    with pytest.raises(ValueError, match="bad failpoint .* in CTRAPPLIANCE_FAILPOINTS"):
        failpoint.configure(spec)
