#!/usr/bin/env bash
# Regenerates crds/ from the Rust types in operator/src/crd (the single source). CI fails when the
# committed files differ (operator test `committed_crds_match_the_types`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -f crds/*.yaml
cargo run -q -p roster-operator -- crd --out-dir crds
ls crds
