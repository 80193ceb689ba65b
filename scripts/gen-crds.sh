#!/usr/bin/env bash
# Regenerates crds/ and charts/roster/crds/ from the Rust types in operator/src/crd (the single source). CI fails when the
# committed files differ (operator test `committed_crds_match_the_types`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -f crds/*.yaml charts/roster/crds/*.yaml
cargo run -q -p roster-operator -- crd --out-dir crds
cargo run -q -p roster-operator -- crd --out-dir charts/roster/crds
ls crds charts/roster/crds
