#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine, then runs them: the static checks (scripts/checks.sh:
# ruff, the format, the import layers, mypy), then the whole pytest suite.
#   - Debian packages: dcmtk (storescu/echoscu), dicom3tools (dciodvfy), orthanc + orthanc-dicomweb (Orthanc),
#     chromium (the worklist's browser tests drive it with Playwright; never `playwright install`),
#     nodejs + npm (the OHIF test installs the pinned viewer with `predraft viewer install`, which runs `npm ci`),
#     docker-compose and systemd (tests/test_deploy.py: `docker-compose config`, `systemd-analyze verify`)
#   - services: Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432, started if they are down
#   - a virtual environment in .venv with predraft and its test extras, at the tested versions (constraints.txt)
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v storescu >/dev/null || need+=(dcmtk)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v npm >/dev/null || need+=(nodejs npm)
# Without their recommended packages: docker-compose would bring a Docker engine, containerd and iptables.
bare=()
command -v docker-compose >/dev/null || bare+=(docker-compose)      # validates deploy/compose.yaml (no engine needed)
command -v systemd-analyze >/dev/null || bare+=(systemd)            # verifies deploy/systemd/ units
if ((${#need[@]} + ${#bare[@]})); then
    echo "installing Debian packages: ${need[*]} ${bare[*]}"
    apt-get update -qq
    if ((${#need[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    if ((${#bare[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${bare[@]}" >/dev/null
    fi
fi

if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
    echo "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
for _ in $(seq 50); do
    redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q && break
    sleep 0.2
done

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'

bash scripts/checks.sh
# Under CI a test that needs ../shared/data/ fails when it is missing, instead of skipping (tests/conftest.py).
exec .venv/bin/python -m pytest "$@"
