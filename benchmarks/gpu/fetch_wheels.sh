#!/usr/bin/env bash
# Download the wheels of benchmarks/gpu/wheels.txt for CPython 3.12 on manylinux x86_64 into .whl/ (issue 19), so
# that archsearch installs on a GPU machine that has torch but no package index:
#
#   benchmarks/gpu/fetch_wheels.sh            # here, where PyPI is reachable (DEST default: .whl, gitignored)
#   # there, from the repository root, with .whl/ carried along:
#   python3 -m pip install --no-index --no-deps .whl/*.whl
#   python3 -m pip install --no-index --no-deps --no-build-isolation -e .
#
# Wheels come from PyPI as binaries only (pip download --only-binary=:all:); a line of wheels.txt marked
# "# build" (an sdist of pure Python, no wheel on PyPI) is built here and must come out as py3-none-any. The
# folder is emptied of wheels first: two versions of one package there would stop the whole install.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest="${1:-.whl}"
list=benchmarks/gpu/wheels.txt
py="${PYTHON:-python3}"
pins() {  # the name==version pins of wheels.txt, with ("build") or without ("binary") the build mark
  if [ "$1" = build ]; then grep -E '^[^#]*#\s*build\b' "$list"; else grep -vE '#\s*build\b' "$list"; fi |
    sed -e 's/#.*//' -e 's/[[:space:]]//g' | awk NF
}
mapfile -t binary < <(pins binary)
mapfile -t built < <(pins build)
mkdir -p "$dest"
rm -f "$dest"/*.whl
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dest" "${binary[@]}"
if [ "${#built[@]}" -gt 0 ]; then
  "$py" -m pip wheel --quiet --no-deps -w "$dest" "${built[@]}"
fi
status=0
for f in "$dest"/*.whl; do  # built wheels must not be tied to this machine's Python or platform
  case "$f" in
    *-none-any.whl | *-cp312-*manylinux*x86_64*.whl | *-abi3-*manylinux*x86_64*.whl) ;;
    *) echo "fetch_wheels.sh: $f is not for CPython 3.12 on manylinux x86_64" >&2; status=1 ;;
  esac
done
want=$((${#binary[@]} + ${#built[@]}))
have=$(find "$dest" -maxdepth 1 -type f -name '*.whl' | wc -l)
if [ "$have" -ne "$want" ]; then
  echo "fetch_wheels.sh: $have wheels in $dest, $want pins in $list" >&2
  status=1
fi
echo "fetch_wheels.sh: $have wheels, $(du -sh "$dest" | cut -f1) in $dest"
exit "$status"
