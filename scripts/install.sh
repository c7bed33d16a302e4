#!/usr/bin/env bash
# `make install`: the project's virtual environment. Settings (make variables or environment):
#   PYTHON        the interpreter that makes the venv (python3)
#   VENV          the venv folder (.venv)
#   LOCK          constraints: the exact versions the committed logs were made with
#                 (requirements.lock); LOCK= (empty) takes the newest versions requirements.txt admits
#   TORCH_INDEX   a PyTorch wheel index (https://download.pytorch.org/whl/cu126, ...): torch and
#                 torchvision come from it, at the lock's versions; given again with another index,
#                 it replaces the torch in the venv
#   PYDENSECRF    0: no pydensecrf2 (it is the one package that needs a C++ compiler and the Python
#                 headers); the CRF then runs on the PyTorch backend everywhere
# A setting that is not given keeps the value the venv was made with (VENV/.settings), so that
# `make demo` / `make test` after `make install PYDENSECRF=0` (or LOCK=, or TORCH_INDEX=...) keep
# that venv as it is; without a venv the defaults above apply. Everything comes from
# requirements.txt; the stamp VENV/.installed records what was installed, so a call that changes
# nothing does nothing.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
settings="$VENV/.settings"
recalled() { [ -f "$settings" ] && grep -q "^$1=" "$settings"; }
recall() { grep -m1 "^$1=" "$settings" | cut -d= -f2-; }
installed_index=$(recalled TORCH_INDEX && recall TORCH_INDEX || true)
if [ -z "${LOCK+set}" ]; then LOCK=$(recalled LOCK && recall LOCK || echo requirements.lock); fi
if [ -z "${PYDENSECRF+set}" ] || [ -z "$PYDENSECRF" ]; then
    PYDENSECRF=$(recalled PYDENSECRF && recall PYDENSECRF || echo 1)
fi
TORCH_INDEX=${TORCH_INDEX:-$installed_index}

case "$PYDENSECRF" in 0|1) ;; *) echo "error: PYDENSECRF=$PYDENSECRF: use 1 (default) or 0 (no compiler)" >&2; exit 2 ;; esac
if [ -n "$LOCK" ] && [ ! -f "$LOCK" ]; then
    echo "error: LOCK=$LOCK does not exist; LOCK= (empty) installs the newest versions requirements.txt admits" >&2
    exit 2
fi
lock_sum=$([ -n "$LOCK" ] && sha256sum "$LOCK" | cut -c1-16 || echo none)
key="requirements=$(sha256sum requirements.txt | cut -c1-16) lock=$LOCK:$lock_sum torch_index=$TORCH_INDEX pydensecrf=$PYDENSECRF"
if [ -f "$VENV/.installed" ] && [ "$(cat "$VENV/.installed")" = "$key" ]; then
    exit 0
fi

if [ ! -x "$PY" ]; then
    "$PYTHON" -m venv "$VENV" || {
        echo "error: $PYTHON -m venv failed; install the venv module (Debian / Ubuntu: apt-get install python3-venv)" >&2
        exit 1
    }
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# what this call installs from requirements.txt and the lock
grep -v '^pydensecrf2' requirements.txt > "$work/no_crf.txt" || true
requirements=requirements.txt
[ "$PYDENSECRF" = 0 ] && requirements="$work/no_crf.txt"
constraints=()
if [ -n "$LOCK" ]; then
    cp "$LOCK" "$work/lock.txt"
    [ "$PYDENSECRF" = 0 ] && grep -v '^pydensecrf2==' "$LOCK" > "$work/lock.txt"
    constraints=(-c "$work/lock.txt")
fi

if [ -n "$TORCH_INDEX" ] && [ "$installed_index" != "$TORCH_INDEX" ]; then
    pins=(torch torchvision)
    if [ -n "$LOCK" ]; then
        pins=($(grep -E '^(torch|torchvision)==' "$LOCK" | sed 's/+.*//'))
    fi
    "$PY" -m pip uninstall -y torch torchvision >/dev/null 2>&1 || true
    "$PY" -m pip install "${pins[@]}" --index-url "$TORCH_INDEX" || {
        echo "error: ${pins[*]} is not on $TORCH_INDEX; give the index of a CUDA these versions are built for, or LOCK= for the newest torch there" >&2
        exit 1
    }
    printf 'LOCK=%s\nPYDENSECRF=%s\nTORCH_INDEX=%s\n' "${LOCK:-}" "$PYDENSECRF" "$TORCH_INDEX" > "$settings"
fi
if [ -n "$TORCH_INDEX" ] && [ -n "$LOCK" ]; then
    # the index's torch brings its own CUDA packages: the lock pins the rest
    grep -vE '^(torch|torchvision|triton|nvidia-[^=]*|cuda-[^=]*)==' "$work/lock.txt" > "$work/lock_no_torch.txt" || true
    constraints=(-c "$work/lock_no_torch.txt")
fi
"$PY" -m pip install -r "$requirements" "${constraints[@]}" || {
    echo "error: pip could not install requirements.txt${LOCK:+ at the versions of $LOCK (made with Python 3.11 on x86-64 Linux; LOCK= takes the newest versions that fit this Python)}" >&2
    exit 1
}
printf 'LOCK=%s\nPYDENSECRF=%s\nTORCH_INDEX=%s\n' "$LOCK" "$PYDENSECRF" "$TORCH_INDEX" > "$settings"
echo "$key" > "$VENV/.installed"
