#!/usr/bin/env bash
# Run HERE (no device time): gathers into .device/ what the GPU machine lacks for scripts/device/run.sh.
#   .device/whl/       Python 3.12 wheels of predraft's run-time needs that the device image does not hold
#                      (the image has torch, timm, numpy, Jinja2, prometheus-client...; see the device
#                      library's KINDS.md). No decoder for compressed pixels: the phantoms are uncompressed.
#   .device/dcmtk.tar.xz  storescu and echoscu with their shared libraries and data dictionary, for
#                      bench/time_to_draft.py (the device has no dcmtk and no package registry).
# Then one device call:  run(command="bash scripts/device/run.sh", carry=[".device"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device && mkdir -p .device/whl

# The versions this checkout's .venv runs (the tests pass with them), for the device's Python 3.12.
[ -x .venv/bin/python ] || { echo "no .venv here: run scripts/test.sh once first" >&2; exit 1; }
.venv/bin/python - <<'PY' > .device/requirements.txt
from importlib.metadata import version
wanted = ["alembic", "argon2-cffi", "argon2-cffi-bindings", "cffi", "pycparser", "fastapi", "starlette", "uvicorn",
          "highdicom", "pydicom", "pynetdicom", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pyjpegls",
          "kombu", "celery", "vine", "amqp", "billiard", "click-didyoumean", "click-plugins", "click-repl",
          "prompt-toolkit", "wcwidth", "tzlocal", "redis", "limits", "deprecated", "pydantic", "pydantic-core",
          "pydantic-settings", "python-dotenv", "typing-inspection", "annotated-types", "python-json-logger",
          "sqlalchemy", "mako", "opentelemetry-api", "annotated-doc", "typing-extensions"]
print("\n".join(f"{name}=={version(name)}" for name in wanted))
PY
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .device/whl -r .device/requirements.txt
[ "$(ls .device/whl/*.whl | wc -l)" -eq "$(wc -l < .device/requirements.txt)" ] \
    || { echo "not every wheel was fetched: compare .device/whl with .device/requirements.txt" >&2; exit 1; }

command -v storescu >/dev/null || { echo "dcmtk is not installed here: run scripts/test.sh once first" >&2; exit 1; }
stage=$(mktemp -d)
mkdir -p "$stage/dcmtk/bin" "$stage/dcmtk/lib" "$stage/dcmtk/share"
cp /usr/bin/storescu /usr/bin/echoscu "$stage/dcmtk/bin/"
# Their shared libraries, but not glibc's own (the device's glibc is newer) nor libstdc++/libgcc/zlib.
for lib in $(ldd /usr/bin/storescu /usr/bin/echoscu | awk '/=>/ {print $3}' | sort -u); do
    case "$(basename "$lib")" in
        libc.so*|libm.so*|libresolv.so*|ld-linux*|libstdc++.so*|libgcc_s.so*|libz.so*|libpthread.so*|libdl.so*) ;;
        *) cp -L "$lib" "$stage/dcmtk/lib/" ;;
    esac
done
cp /usr/share/libdcmtk*/dicom.dic "$stage/dcmtk/share/"
tar -C "$stage" -cJf .device/dcmtk.tar.xz dcmtk
rm -rf "$stage"
du -sh .device/whl .device/dcmtk.tar.xz
echo "ready: run(command=\"bash scripts/device/run.sh\", carry=[\".device\"], timeout_s=540)"
