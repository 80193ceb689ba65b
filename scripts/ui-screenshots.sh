#!/usr/bin/env bash
# Regenerates the UI's screenshots in docs/ui/ (shown in the README): the browser tests, run with
# ROSTER_UI_SCREENSHOTS set, photograph the main pages as they test them. Needs what the tests need:
# `cargo build --workspace --bins`, Debian's chromium, and `npm ci` in e2e/ui.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
(cd e2e/ui && npm ci --no-audit --no-fund --loglevel=error)
ROSTER_UI_SCREENSHOTS=docs/ui node --test e2e/ui/test.mjs
