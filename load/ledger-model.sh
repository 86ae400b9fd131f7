#!/usr/bin/env bash
# The ledger's model-based test for longer than CI runs it: SEEDS seeds of OPS operations
# each, on both stores (tests/tests/ledger_model.rs). Prints the operations that agreed
# with the model and the time taken; a disagreement prints its seed and shortest prefix.
#
#   load/ledger-model.sh [SEEDS] [OPS]      (default 400 seeds × 1,000 operations)
set -euo pipefail
cd "$(dirname "$0")/.."
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
WENXIAO_MODEL_SEEDS="${1:-400}" WENXIAO_MODEL_OPS="${2:-1000}" WENXIAO_MODEL_SECS=0 \
    cargo test --release -p wenxiao-tests --test ledger_model -- --nocapture --test-threads 1 \
    2>&1 | grep -E "agreed with the model|disagrees|shortest failing|replay:|test result"
