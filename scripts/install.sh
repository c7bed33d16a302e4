#!/usr/bin/env bash
# `make install`: the project's virtual environment. Settings (make variables or environment):
#   PYTHON        the interpreter that makes the venv (python3)
#   VENV          the venv folder (.venv)
#   LOCK          constraints: the exact versions the committed logs were made with
#                 (requirements.lock); LOCK= (empty) takes the newest versions requirements.txt admits
#   TORCH_INDEX   a PyTorch wheel index (https://download.pytorch.org/whl/cu126, ...): torch and
#                 torchvision come from it, at the lock's versions; remembered in VENV/.torch_index,
#                 and given again with another index, it replaces the torch in the venv
#   PYDENSECRF    0: no pydensecrf2 (it is the one package that needs a C++ compiler and the Python
#                 headers); the CRF then runs on the PyTorch backend everywhere
# Everything comes from requirements.txt; the stamp VENV/.installed records the settings it was made
# with, so a second call with the same ones does nothing and one with other ones installs again.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
LOCK=${LOCK-requirements.lock}
TORCH_INDEX=${TORCH_INDEX:-}
PYDENSECRF=${PYDENSECRF:-1}
PY="$VENV/bin/python"

case "$PYDENSECRF" in 0|1) ;; *) echo "error: PYDENSECRF=$PYDENSECRF: use 1 (default) or 0 (no compiler)" >&2; exit 2 ;; esac
if [ -n "$LOCK" ] && [ ! -f "$LOCK" ]; then
    echo "error: LOCK=$LOCK does not exist; LOCK= (empty) installs the newest versions requirements.txt admits" >&2
    exit 2
fi
# the index a previous call installed torch from is kept unless another one is given
[ -z "$TORCH_INDEX" ] && [ -f "$VENV/.torch_index" ] && TORCH_INDEX=$(cat "$VENV/.torch_index")
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

if [ -n "$TORCH_INDEX" ] && [ "$(cat "$VENV/.torch_index" 2>/dev/null)" != "$TORCH_INDEX" ]; then
    pins=(torch torchvision)
    if [ -n "$LOCK" ]; then
        pins=($(grep -E '^(torch|torchvision)==' "$LOCK" | sed 's/+.*//'))
    fi
    "$PY" -m pip uninstall -y torch torchvision >/dev/null 2>&1 || true
    "$PY" -m pip install "${pins[@]}" --index-url "$TORCH_INDEX" || {
        echo "error: ${pins[*]} is not on $TORCH_INDEX; give the index of a CUDA these versions are built for, or LOCK= for the newest torch there" >&2
        exit 1
    }
    echo "$TORCH_INDEX" > "$VENV/.torch_index"
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
echo "$key" > "$VENV/.installed"
