# Sourced by scripts/fleet and scripts/test: make the venv on first use, refresh it when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLEET_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "SmartFleet needs Python 3.11+ ($PY is older)" >&2; exit 1; }
stamp="$VENV/.smartfleet-installed"
hash="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
want="$hash${FLEET_EXTRAS:-}"
have="$(cat "$stamp" 2>/dev/null || true)"
# A venv installed with extras serves a command that needs none.
[ -z "${FLEET_EXTRAS:-}" ] && [ "${have#"$hash"}" != "$have" ] && want="$have"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV (first use)…" >&2
  "$PY" -m venv "$VENV"
fi
if [ "$have" != "$want" ]; then
  echo "installing SmartFleet into $VENV…" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT${FLEET_EXTRAS:-}" >&2
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
