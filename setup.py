"""Build steps beyond pyproject: generated gRPC stubs, the Cython modules (_core, _hpack,
grpcserver._h2), the cffi mount module."""
import re
import subprocess
import sys
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def write_version():
    """appliance/_version.py from pyproject.toml: the one source of the version."""
    text = (HERE / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', text, re.M).group(1)
    (HERE / "appliance" / "_version.py").write_text(
        f'"""Generated from pyproject.toml by setup.py."""\n__version__ = "{version}"\n')


def generate_stubs():
    subprocess.run([sys.executable, str(HERE / "scripts" / "genproto.py")], check=True)


class BuildPyWithStubs(build_py):
    def run(self):
        write_version()
        generate_stubs()
        super().run()


write_version()
if not (HERE / "appliance" / "_proto" / "containerd").is_dir():
    generate_stubs()

setup(
    cmdclass={"build_py": BuildPyWithStubs},
    ext_modules=cythonize(
        [Extension("appliance._core", ["appliance/_core.pyx"]),
         Extension("appliance._hpack", ["appliance/_hpack.pyx"]),
         Extension("appliance.grpcserver._h2", ["appliance/grpcserver/_h2.pyx"])],
        compiler_directives={"language_level": "3"}, quiet=True),
    cffi_modules=["appliance/_mount_cffi.py:ffibuilder"],
)
